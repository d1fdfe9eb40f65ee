"""``xaibench.models`` is :mod:`xaibench.kit.models`, the same module under its older path."""

import sys

from xaibench.kit import models

sys.modules[__name__] = models
