"""``xaibench leaderboard DIR --format latex``: the paper's Table I layout as a LaTeX document.

Per dataset and backbone one ``table`` per metric of the Table I layout (accuracy; explanation Jaccard and
segmentation IoU where the grid has them): masks as columns, a row per ensemble (α rows for the paper's
logit mix) and a baseline row; each mean with its 95% bootstrap CI on the line below, the best value of
each mask column in bold, and the published value in parentheses where the grid names a published table.
``booktabs`` rules; every piece of text is escaped, so labels with ``_``, ``&`` or ``%`` compile.
"""

from __future__ import annotations

import pandas as pd

from xaibench.pipeline import schema
from xaibench.pipeline.records import component_name
from xaibench.pipeline.results import NO_VAL
from xaibench.presentation.leaderboard import (ACCURACY_TITLE, Entry, at_or_below_chance, published_lookup,
                                               table_one_entries)
from xaibench.text import MISSING, NOT_POSSIBLE, interval, number

# Text → LaTeX, for the characters that are special to LaTeX or outside what pdflatex reads by default.
_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "α": r"$\alpha$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "·": r"$\cdot$", "†": r"$\dagger$",
    "—": "---", "–": "--", "±": r"$\pm$", "×": r"$\times$",
    "°": r"$^\circ$", "≤": r"$\leq$", "τ": r"$\tau$",
}


def escape(text) -> str:
    """``text`` with every LaTeX special character escaped; other non-ASCII characters become ``?``."""
    out = []
    for char in str(text):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 128:
            out.append(char)
        else:
            out.append("?")
    return "".join(out)


def _mean(entry: Entry | None, metric: str) -> str:
    if entry is not None and entry.row.get("selection") == NO_VAL:
        return escape(NOT_POSSIBLE)
    if entry is None or pd.isna(entry.row.get(metric)):
        return escape(MISSING)
    scale, digits = schema.display(metric)
    text = number(entry.row[metric], scale=scale, digits=digits)
    if entry.best:
        text = rf"\textbf{{{text}}}"
    if not entry.row["complete"]:
        text += r"$^\dagger$"
    if entry.paper is not None:
        text += rf" ({entry.paper:.{digits}f})"
    if at_or_below_chance(entry.row, metric):
        text += r"$^\circ$"
    return text


def _interval(entry: Entry | None, metric: str) -> str:
    if entry is None:
        return ""
    scale, digits = schema.display(metric)
    bracket = interval(entry.row.get(f"{metric}_ci_low"), entry.row.get(f"{metric}_ci_high"), scale=scale,
                       digits=digits)
    return rf"{{\footnotesize {bracket}}}" if bracket else ""


def _row_label(label: str) -> str:
    if label.startswith("α="):
        return rf"$\alpha = {escape(label[2:])}$"
    return escape(label).replace(r"$\alpha$*", r"$\alpha^*$")


def breakable(text) -> str:
    """``escape(text)`` that may break after a comma (component labels are long and have no spaces)."""
    return escape(text).replace(",", r",\allowbreak{}")


def table(summary: pd.DataFrame, metric: str, caption: str, published: dict | None = None, note: str = "") -> str:
    """One Table I layout of ``metric`` as a LaTeX ``table`` environment; ``note`` (LaTeX) goes below."""
    layout = table_one_entries(summary, metric, published)
    columns = layout.masks or ["raw"]
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{caption}}}",
             r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             " & ".join(["Model"] + [escape(c) for c in columns]) + r" \\", r"\midrule"]
    for label, entries in layout.rows:
        entries = entries or [None]
        lines.append(" & ".join([_row_label(label)] + [_mean(e, metric) for e in entries]) + r" \\")
        lines.append(" & ".join([""] + [_interval(e, metric) for e in entries]) + r" \\")
    if layout.baseline is not None:
        if layout.rows:
            lines.append(r"\midrule")
        pad = [""] * (len(columns) - 1)
        lines.append(" & ".join(["Baseline", _mean(layout.baseline, metric)] + pad) + r" \\")
        lines.append(" & ".join(["", _interval(layout.baseline, metric)] + pad) + r" \\")
    for label, entry in layout.chance:
        pad = [""] * (len(columns) - 1)
        lines.append(" & ".join([escape(label), _mean(entry, metric)] + pad) + r" \\")
        lines.append(" & ".join(["", _interval(entry, metric)] + pad) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines.append(rf"\par\smallskip{{\footnotesize {note}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def document(df: pd.DataFrame, summary: pd.DataFrame, title: str = "xaibench leaderboard",
             published: pd.DataFrame | None = None, *, machines: str | None = None) -> str:
    """A standalone LaTeX document (``article``, ``booktabs``) with every Table I layout of the summary,
    the failed cells' count and, given ``machines`` (``xaibench.machine.sentence``), the machine the numbers
    are from. Compiles with pdflatex."""
    parts = [r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage{booktabs}",
             r"\usepackage[margin=2cm]{geometry}", r"\begin{document}", rf"\section*{{{escape(title)}}}"]
    failed = int((df["status"] != "done").sum())
    parts.append(escape(f"{len(df)} cells, {failed} failed. Means over seeds; below each, its 95% bootstrap CI "
                        f"over test images; bold: the best value of its column; † a configuration missing seeds; ° a value no "
                        f"better than the random map's on the same images; α* (val): α chosen on validation accuracy")
                 + (escape("; in parentheses: the published value.") if published is not None else "."))
    if machines:
        parts.append("\n" + escape(machines))
    if not len(summary):
        parts.append("\n" + escape("No cell finished, so there is no table to show."))
    for (dataset, backbone), group in summary.groupby(["dataset", "backbone"], sort=False):
        models = group.drop_duplicates(["mask", "ensemble"])
        seeds = sorted(df[(df["dataset"] == dataset) & (df["backbone"] == backbone)]["seed"].unique())
        where = f"{component_name(dataset)} · {component_name(backbone)} · seeds {', '.join(map(str, seeds))}"
        note = f"Dataset {breakable(dataset)}; backbone {breakable(backbone)}."
        paper = published_lookup(published, dataset)
        parts.append(table(models, "accuracy", escape(f"{ACCURACY_TITLE}: {where}"), paper, note))
        for explainer, sub in group[group["explainer"] != ""].groupby("explainer", sort=False):
            explained = sub.drop_duplicates(["mask", "ensemble"])
            for metric in schema.latex_tables("explanation"):
                if _has(explained, metric.name):
                    caption = f"{metric.caption}, {component_name(explainer)}: {where}"
                    parts.append(table(explained, metric.name, escape(caption),
                                       note=f"Explainer {breakable(explainer)}. {note}"))
            for (seeder, segmenter), seg in sub[sub["segmenter"] != ""].groupby(["seeder", "segmenter"], sort=False):
                chain = f"{explainer} → {seeder} → {segmenter}"
                for metric in schema.latex_tables("segmentation"):
                    if _has(seg, metric.name):
                        caption = (f"{metric.caption}, {component_name(explainer)} → {component_name(seeder)} → "
                                   f"{component_name(segmenter)}: {where}")
                        parts.append(table(seg, metric.name, escape(caption), note=f"Chain {breakable(chain)}. {note}"))
    parts.append(r"\end{document}")
    return "\n\n".join(parts) + "\n"


def _has(frame: pd.DataFrame, metric: str) -> bool:
    return metric in frame and bool(pd.to_numeric(frame[metric], errors="coerce").notna().any())
