"""``xaibench.testing`` is :mod:`xaibench.kit.testing`, the same module under its older path (and so are
its submodules: ``xaibench.testing._core`` is ``xaibench.kit.testing._core``, never a second copy)."""

import sys

from xaibench.kit import testing

sys.modules[__name__] = testing
for _name, _module in list(sys.modules.items()):
    if _name.startswith("xaibench.kit.testing."):
        sys.modules[__name__ + _name.removeprefix("xaibench.kit.testing")] = _module
