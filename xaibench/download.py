"""``xaibench.download`` is :mod:`xaibench.kit.download`, the same module under its older path."""

import sys

from xaibench.kit import download

sys.modules[__name__] = download
