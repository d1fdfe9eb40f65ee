"""xaibench: explanation-guided classification and segmentation benchmarks for aerial imagery."""

from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.registry import create, get_registry
from xaibench.version import __version__


def load_dataset(name: str, /, **params):
    """Build a registered dataset by name: ``load_dataset("synthetic", image_size=64)``."""
    return create("datasets", name, **params)


__all__ = ["hookimpl", "create", "get_registry", "load_dataset", "__version__"]
