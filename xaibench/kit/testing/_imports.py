"""The check that importing a plugin module stays cheap: no heavy library at import time."""

from __future__ import annotations

import json
import subprocess
import sys

# Libraries that take seconds to import (or pull in CUDA): a plugin imports them inside the methods that
# use them, never at module level, so `xaibench plugins` and `--help` stay fast.
HEAVY_MODULES = ("torch", "torchvision", "timm", "segment_anything", "pytorch_grad_cam", "cv2", "rasterio",
                 "geopandas", "ray", "tensorflow", "jax")


def check_light_import(module: str, *, heavy=HEAVY_MODULES) -> None:
    """Import ``module`` in a fresh interpreter and fail if that imported any of ``heavy``.

    Raises ``AssertionError`` naming the module, the heavy libraries it pulled in and the fix; an import
    that fails is reported the same way."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise AssertionError(f"importing {module!r} failed: {last}")
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    found = sorted(loaded & set(heavy))
    if found:
        raise AssertionError(f"importing {module!r} imports {', '.join(found)}; import heavy libraries inside the "
                             f"methods that use them (def __call__(...): import torch), so that listing plugins "
                             f"and xaibench --help stay fast")
