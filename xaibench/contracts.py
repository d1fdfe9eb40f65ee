"""``xaibench.contracts`` is :mod:`xaibench.kit.contracts`, the same module under its older path."""

import sys

from xaibench.kit import contracts

sys.modules[__name__] = contracts
