"""``xaibench.registry`` is :mod:`xaibench.kit.registry`, the same module under its older path."""

import sys

from xaibench.kit import registry

sys.modules[__name__] = registry
