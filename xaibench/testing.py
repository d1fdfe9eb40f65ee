"""``xaibench.testing`` is :mod:`xaibench.kit.testing`, the same module under its older path."""

import sys

from xaibench.kit import testing

sys.modules[__name__] = testing
