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


def _name(label: str) -> str:
    return str(label).split("(", 1)[0]


def read_published(path) -> pd.DataFrame:
    """Published numbers: columns dataset, mask (``none`` for the baseline), alpha, accuracy (%)."""
    table = pd.read_csv(path)
    missing = {"dataset", "mask", "alpha", "accuracy"} - set(table.columns)
    if missing:
        from .errors import UserError

        raise UserError(f"published table {str(path)!r} lacks the columns {sorted(missing)}")
    return table


def _published_lookup(published: pd.DataFrame | None, dataset: str):
    """``(mask name, alpha) -> published accuracy in %`` for one dataset, or None."""
    if published is None:
        return None
    rows = published[published["dataset"] == _name(dataset)]
    if rows.empty:
        return None
    return {(str(r["mask"]), round(float(r["alpha"]), 6)): float(r["accuracy"]) for _, r in rows.iterrows()}


def _layout(df: pd.DataFrame, metric: str, scale: float, digits: int, published: dict | None = None) -> str:
    """Masks as columns, ensemble rows sorted by α, the baseline row last; mean over seeds.

    With ``published`` each cell reads ``reproduced / published (Δ)`` where a published number exists."""
    done = df[df["status"] == "done"]
    masks = [m for m in dict.fromkeys(df["mask"]) if m != "none"]
    rows = [e for e in dict.fromkeys(df.sort_values("alpha", kind="stable")["ensemble"]) if e != "baseline"]
    alpha_of = dict(zip(df["ensemble"], df["alpha"]))

    def cell(values, mask, alpha):
        mean = values.mean() if len(values) else None
        text = _fmt(mean, scale, digits)
        paper = (published or {}).get((_name(mask), round(float(alpha), 6)))
        if paper is None:
            return text
        delta = "—" if mean is None or math.isnan(mean) else f"{mean * scale - paper:+.{digits}f}"
        return f"{text} / {paper:.{digits}f} ({delta})"

    header = "| | " + " | ".join(masks or ["raw"]) + " |"
    lines = [header, "|" + "---|" * (len(masks or ["raw"]) + 1)]
    for ensemble in rows:
        cells = []
        for mask in masks:
            sel = done[(done["ensemble"] == ensemble) & (done["mask"] == mask)][metric].astype(float)
            cells.append(cell(sel, mask, alpha_of[ensemble]))
        lines.append(f"| {_row_label(ensemble, alpha_of[ensemble])} | " + " | ".join(cells) + " |")
    base = done[done["ensemble"] == "baseline"][metric].astype(float)
    if len(df[df["ensemble"] == "baseline"]):
        filler = [""] * (max(len(masks), 1) - 1)
        lines.append("| Baseline | " + " | ".join([cell(base, "none", 1.0)] + filler) + " |")
    return "\n".join(lines)


def markdown(df: pd.DataFrame, title: str = "xaibench leaderboard", published: pd.DataFrame | None = None) -> str:
    parts = [f"# {title}", ""]
    failed = int((df["status"] != "done").sum())
    parts.append(f"{len(df)} cells, {failed} failed. Values are means over seeds; accuracy is measured on raw "
                 "test images for every model and ensemble.")
    for (dataset, backbone), group in df.groupby(["dataset", "backbone"], sort=False):
        seeds = sorted(group["seed"].unique())
        parts += ["", f"## {dataset} · {backbone}", "",
                  f"Seeds: {', '.join(map(str, seeds))}.", ""]
        models = group.drop_duplicates(["seed", "mask", "ensemble"])
        paper = _published_lookup(published, dataset)
        heading = "### Accuracy (%)" + (" · reproduced / published (Δ)" if paper else "")
        parts += [heading, "", _layout(models, "accuracy", 100, 2, paper)]
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


def write(out_dir: Path, rows: list[dict], title: str = "xaibench leaderboard",
          published: pd.DataFrame | None = None) -> tuple[Path, Path]:
    df = frame(rows)
    md_path, csv_path = Path(out_dir) / "leaderboard.md", Path(out_dir) / "leaderboard.csv"
    _atomic_write(md_path, markdown(df, title, published))
    _atomic_write(csv_path, df.to_csv(index=False))
    return md_path, csv_path


def _atomic_write(path: Path, text: str) -> None:
    import os

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
