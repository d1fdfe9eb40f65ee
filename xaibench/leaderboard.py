"""Leaderboard tables from the cell records of one or more run stores.

``leaderboard.csv`` is the long form (one row per cell, one column per metric); ``leaderboard.md`` shows,
per dataset and backbone, the paper's Table I layout: masks as columns, ensemble settings (α) as rows and
a baseline row, for accuracy, explanation Jaccard and segmentation IoU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

ID_COLUMNS = ["dataset", "backbone", "seed", "mask", "ensemble", "alpha", "explainer", "seeder", "segmenter"]
METRIC_COLUMNS = ["accuracy", "n_test", "jaccard", "jaccard_n", "jaccard_excluded", "seg_iou", "seg_n",
                  "seg_excluded"]


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for column in ID_COLUMNS + METRIC_COLUMNS + ["status", "error"]:
        if column not in df:
            df[column] = None
    return df[ID_COLUMNS + ["status"] + METRIC_COLUMNS + ["error"]]


def _row_label(ensemble: str, alpha) -> str:
    if ensemble == "baseline":
        return "Baseline"
    if ensemble.startswith("logit-mix(") and alpha is not None:
        return f"α={alpha:g}"
    return ensemble


def _fmt(value, scale, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * scale:.{digits}f}"


def _layout(df: pd.DataFrame, metric: str, scale: float, digits: int) -> str:
    """Masks as columns, ensemble rows sorted by α, the baseline row last; mean over seeds."""
    done = df[df["status"] == "done"]
    masks = [m for m in dict.fromkeys(df["mask"]) if m != "none"]
    rows = [e for e in dict.fromkeys(df.sort_values("alpha", kind="stable")["ensemble"]) if e != "baseline"]
    alpha_of = dict(zip(df["ensemble"], df["alpha"]))
    header = "| | " + " | ".join(masks or ["raw"]) + " |"
    lines = [header, "|" + "---|" * (len(masks or ["raw"]) + 1)]
    for ensemble in rows:
        cells = []
        for mask in masks:
            sel = done[(done["ensemble"] == ensemble) & (done["mask"] == mask)][metric].astype(float)
            cells.append(_fmt(sel.mean() if len(sel) else None, scale, digits))
        lines.append(f"| {_row_label(ensemble, alpha_of[ensemble])} | " + " | ".join(cells) + " |")
    base = done[done["ensemble"] == "baseline"][metric].astype(float)
    if len(df[df["ensemble"] == "baseline"]):
        filler = [""] * (max(len(masks), 1) - 1)
        lines.append("| Baseline | " + " | ".join([_fmt(base.mean() if len(base) else None, scale, digits)] + filler)
                     + " |")
    return "\n".join(lines)


def markdown(df: pd.DataFrame, title: str = "xaibench leaderboard") -> str:
    parts = [f"# {title}", ""]
    failed = int((df["status"] != "done").sum())
    parts.append(f"{len(df)} cells, {failed} failed. Values are means over seeds; accuracy is measured on raw "
                 "test images for every model and ensemble.")
    for (dataset, backbone), group in df.groupby(["dataset", "backbone"], sort=False):
        seeds = sorted(group["seed"].unique())
        parts += ["", f"## {dataset} · {backbone}", "",
                  f"Seeds: {', '.join(map(str, seeds))}.", ""]
        models = group.drop_duplicates(["seed", "mask", "ensemble"])
        parts += ["### Accuracy (%)", "", _layout(models, "accuracy", 100, 2)]
        for explainer, sub in group[group["explainer"] != ""].groupby("explainer", sort=False):
            explained = sub.drop_duplicates(["seed", "mask", "ensemble"])
            parts += ["", f"### Explanation Jaccard vs ground-truth masks · {explainer}", "",
                      _layout(explained, "jaccard", 1, 3)]
            for (seeder, segmenter), seg in sub[sub["segmenter"] != ""].groupby(["seeder", "segmenter"], sort=False):
                parts += ["", f"### Segmentation IoU · {explainer} → {seeder} → {segmenter}", "",
                          _layout(seg, "seg_iou", 1, 3)]
    failures = df[df["status"] != "done"]
    if len(failures):
        parts += ["", "## Failed cells", ""]
        for _, row in failures.iterrows():
            parts.append(f"- {row['dataset']} {row['backbone']} seed={row['seed']} {row['mask']} {row['ensemble']} "
                         f"{row['explainer']} {row['seeder']} {row['segmenter']}: {row['error']}")
    return "\n".join(parts) + "\n"


def write(out_dir: Path, rows: list[dict], title: str = "xaibench leaderboard") -> tuple[Path, Path]:
    df = frame(rows)
    md_path, csv_path = Path(out_dir) / "leaderboard.md", Path(out_dir) / "leaderboard.csv"
    _atomic_write(md_path, markdown(df, title))
    _atomic_write(csv_path, df.to_csv(index=False))
    return md_path, csv_path


def _atomic_write(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
