"""``xaibench.splits`` is :mod:`xaibench.kit.splits`, the same module under its older path."""

import sys

from xaibench.kit import splits

sys.modules[__name__] = splits
