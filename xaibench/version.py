"""The version of xaibench (also the version of its built-in plugins, which is part of every cache key)."""

__version__ = "0.3.0"
