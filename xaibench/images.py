"""``xaibench.images`` is :mod:`xaibench.kit.images`, the same module under its older path."""

import sys

from xaibench.kit import images

sys.modules[__name__] = images
