"""What storing saliency maps as float16 instead of float32 does to every explanation metric.

    python benchmarks/map_precision.py RUN_DIR

Reads every ``explain`` artifact of a finished run (stored as float32), rounds the maps to float16 and
back, and scores both with every explanation metric at the grid's threshold. Prints, per metric, the
largest absolute difference of a per-image score and of an explanation's mean score, and how many
per-image scores changed. The explain stage stores float32 because these differences are above 1e-4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from xaibench.pipeline import metrics
from xaibench.pipeline.artifacts import Artifacts


def compare(run_dir: Path, threshold: float = 0.5) -> dict:
    artifacts = Artifacts(run_dir / "cache")
    data_keys = [p.name.split(".")[0] for p in (run_dir / "cache" / "data").glob("*.test")]
    test = artifacts.data(data_keys[0], "test")
    out: dict[str, dict] = {}
    for path in sorted(p for p in (run_dir / "cache" / "explain").iterdir() if p.is_dir() and not p.name.startswith(".")):
        explained = artifacts.load("explain", path.name)
        maps = np.asarray(explained["maps"])
        if maps.dtype != np.float32:
            raise SystemExit(f"{path}: maps are {maps.dtype}; run this on a run that stored float32 maps")
        truth = test["references"][explained["index"]]
        full = metrics.explanation_per_image(maps, truth, threshold=threshold)
        half = metrics.explanation_per_image(maps.astype(np.float16).astype(np.float32), truth, threshold=threshold)
        for name in full:
            a, b = full[name], half[name]
            finite = np.isfinite(a) & np.isfinite(b)
            entry = out.setdefault(name, {"max_image_diff": 0.0, "max_mean_diff": 0.0, "images_changed": 0,
                                          "images": 0})
            entry["max_image_diff"] = max(entry["max_image_diff"], float(np.abs(a[finite] - b[finite]).max(initial=0)))
            entry["max_mean_diff"] = max(entry["max_mean_diff"], abs(float(np.nanmean(a)) - float(np.nanmean(b))))
            entry["images_changed"] += int((a[finite] != b[finite]).sum())
            entry["images"] += int(finite.sum())
    return out


if __name__ == "__main__":
    print(json.dumps(compare(Path(sys.argv[1])), indent=2))
