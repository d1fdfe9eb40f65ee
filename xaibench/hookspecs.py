"""``xaibench.hookspecs`` is :mod:`xaibench.kit.hookspecs`, the same module under its older path."""

import sys

from xaibench.kit import hookspecs

sys.modules[__name__] = hookspecs
