"""Leaderboards drawn from the frames of ``pipeline.results`` (nothing is recomputed).

- ``leaderboard.csv``: the long form, one row per cell (dataset/backbone/seed/mask/ensemble/explainer/
  seeder/segmenter), one column per metric (``results.frame``).
- ``leaderboard_summary.csv``: one row per configuration over its seeds (``results.summarise``).
- ``leaderboard.md``: per dataset and backbone, the paper's Table I layout (masks as columns, α as rows,
  a baseline row) for accuracy, explanation Jaccard and segmentation IoU, and a detail table per metric.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from xaibench.kit.files import atomic_write_text
from xaibench.pipeline import sanity, schema
from xaibench.pipeline.metrics import BOX_IOU_LEVELS
from xaibench.pipeline.records import Status, component_name, variant_label
from xaibench.pipeline.results import NO_VAL, SELECTED, group_columns
from xaibench.text import MISSING, NOT_POSSIBLE, interval, number, with_interval

# The title of every accuracy table (markdown, LaTeX, the terminal's).
ACCURACY_TITLE = f"{schema.get('accuracy').label} on raw test images"
WORST = "worst group"


def group_table(summary: pd.DataFrame):
    """One row per model variant: overall accuracy and per group, and the worst group's, each [95% CI]."""
    names = group_columns(summary)
    scale, digits = schema.display("accuracy")
    header = ["mask", "ensemble", "all"] + [f"{n} (n={int(summary[f'accuracy[{n}]_n'].dropna().iloc[0])})"
                                             for n in names] + [WORST]
    rows = []
    row_label = _row_labels(summary)
    for _, r in summary.iterrows():
        if r.get("selection") == NO_VAL:
            rows.append([r["mask"], row_label[r["ensemble"]], NOT_POSSIBLE] + [""] * (len(names) + 1))
            continue
        cells = []
        for column in ["accuracy"] + [f"accuracy[{n}]" for n in names] + ["worst_group_accuracy"]:
            value = r.get(column)
            cells.append(with_interval(value, r.get(column + "_ci_low"), r.get(column + "_ci_high"), scale=scale,
                                       digits=digits))
        rows.append([r["mask"], row_label[r["ensemble"]]] + cells)
    return header, rows


# -- tables -----------------------------------------------------------------------------------------


def _row_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Ensemble label → row label (``records.variant_label``); where several rules with a mixing weight
    share a table, their rows also name the rule (``logit-mix α=0.8``)."""
    weighted = frame[frame["ensemble"] != "baseline"]
    weighted = weighted[pd.to_numeric(weighted["alpha"], errors="coerce").notna()]
    named = weighted["ensemble"].map(component_name).nunique() > 1
    out = {}
    for ensemble, alpha in zip(frame["ensemble"], frame["alpha"]):
        if str(ensemble).endswith(SELECTED):
            out[ensemble] = str(ensemble) if named else SELECTED
            continue
        label = variant_label(ensemble, alpha)
        out[ensemble] = f"{component_name(ensemble)} {label}" if named and label.startswith("α=") else label
    return out


def published_lookup(published: pd.DataFrame | None, dataset: str):
    """``(mask name, alpha) -> published accuracy in %`` for one dataset, or None."""
    if published is None:
        return None
    rows = published[published["dataset"] == component_name(dataset)]
    if rows.empty:
        return None
    return {(str(r["mask"]), round(float(r["alpha"]), 6)): float(r["accuracy"]) for _, r in rows.iterrows()}


BELOW_CHANCE = "≤ chance"
UNCHANGED = "≈ unchanged"


def unchanged_by_randomisation(row, metric) -> bool:
    """Whether a summary row's maps barely change when the model's top layers are re-initialised: its
    mean ``sanity_spearman`` is above ``sanity.UNCHANGED_SPEARMAN`` (the sanity check fails)."""
    value = row.get("sanity_spearman")
    return metric == "sanity_spearman" and value is not None and not pd.isna(value) \
        and float(value) > sanity.UNCHANGED_SPEARMAN


def at_or_below_chance(row, metric) -> bool:
    """Whether ``metric`` of a summary row is no better than the ``random`` explainer's on the same
    images (its mean lift is at most 0)."""
    lift = row.get(f"lift_{metric}")
    return lift is not None and not pd.isna(lift) and float(lift) <= 0


def _value(row, metric, scale, digits, paper=None) -> str:
    if row.get("selection") == NO_VAL:
        return NOT_POSSIBLE
    if metric not in row or pd.isna(row.get(metric)):
        return MISSING
    text = with_interval(row[metric], row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high"), scale=scale,
                         digits=digits)
    if not row["complete"]:
        text += f" †{row['n_seeds']}/{row['seeds_expected']} seeds"
    if paper is not None:
        text += f" / {paper:.{digits}f} ({row[metric] * scale - paper:+.{digits}f})"
    if at_or_below_chance(row, metric):
        text += f" {BELOW_CHANCE}"
    if unchanged_by_randomisation(row, metric):
        text += f" {UNCHANGED}"
    return text


class Best(str):
    """A table cell holding its column's best value (rendered bold)."""


@dataclasses.dataclass
class Entry:
    """One value of a Table I layout: the summary row it comes from, the published value beside it (or
    None), and whether it is its column's best."""

    row: pd.Series
    paper: float | None = None
    best: bool = False


@dataclasses.dataclass
class TableOne:
    """The paper's Table I layout of one metric: masks as columns, a row per ensemble (sorted by α) and a
    baseline row; a missing value is None."""

    metric: str
    masks: list[str]
    rows: list[tuple[str, list[Entry | None]]]
    baseline: Entry | None
    chance: list[tuple[str, Entry]] = dataclasses.field(default_factory=list)  # (label, entry) per reference


def table_one_entries(summary: pd.DataFrame, metric: str, published: dict | None = None) -> TableOne:
    """The values of ``table_one``. In each mask column the best mean over the ensemble rows (the highest,
    or the lowest for a metric whose schema says lower is better) is marked, when there are several rows;
    ties are all marked."""
    scale, digits = schema.display(metric)
    masks = [m for m in dict.fromkeys(summary["mask"]) if m != "none"]
    ensembles = summary[summary["ensemble"] != "baseline"].sort_values("alpha", kind="stable")
    row_label = _row_labels(summary)
    rows = []
    for ensemble, sub in ensembles.groupby("ensemble", sort=False):
        alpha = sub["alpha"].iloc[0]
        entries = []
        for mask in masks:
            hit = sub[sub["mask"] == mask]
            paper = (published or {}).get((component_name(mask), round(float(alpha), 6)))
            entries.append(Entry(hit.iloc[0], paper) if len(hit) else None)
        rows.append((row_label[ensemble], entries))

    def rounded(entry):
        value = entry.row.get(metric) if entry is not None else None
        return round(float(value) * scale, digits) if value is not None and not pd.isna(value) else None

    ranked = [(label, entries) for label, entries in rows if not label.endswith(SELECTED)]  # not the α* rows
    for column in range(len(masks)):
        values = [rounded(entries[column]) for _, entries in ranked]
        finite = [v for v in values if v is not None]
        for (_, entries), value in zip(ranked, values):
            if finite and len(ranked) > 1 and value == (max if schema.get(metric).higher_is_better else min)(finite):
                entries[column].best = True
    base = summary[summary["ensemble"] == "baseline"]
    baseline = Entry(base.iloc[0], (published or {}).get(("none", 1.0))) if len(base) else None
    chance = []
    reference = _chance_reference(summary)
    for name in schema.get(metric).chance:
        column = f"{name}_{metric}"
        if reference is not None and column in reference and not pd.isna(reference.get(column)):
            values = {metric: reference[column], f"{metric}_ci_low": reference.get(f"{column}_ci_low"),
                      f"{metric}_ci_high": reference.get(f"{column}_ci_high"), "complete": reference["complete"],
                      "n_seeds": reference["n_seeds"], "seeds_expected": reference["seeds_expected"]}
            chance.append((f"Chance: {name}", Entry(pd.Series(values))))
    return TableOne(metric, masks, rows, baseline, chance)


def table_one(summary: pd.DataFrame, metric: str, published: dict | None = None):
    """Masks as columns, ensemble rows sorted by α, the baseline row last: ``(header, rows)`` of text,
    each column's best value a ``Best`` (see ``table_one_entries``)."""
    scale, digits = schema.display(metric)
    table = table_one_entries(summary, metric, published)
    header = [""] + (table.masks or ["raw"])

    def text(entry):
        if entry is None:
            return MISSING
        value = _value(entry.row, metric, scale, digits, entry.paper)
        return Best(value) if entry.best else value

    rows = [[label] + [text(e) for e in entries] for label, entries in table.rows]
    if table.baseline is not None:
        rows.append(["Baseline", text(table.baseline)] + [""] * (len(header) - 2))
    for label, entry in table.chance:
        rows.append([label, text(entry)] + [""] * (len(header) - 2))
    return header, rows


def detail_table(summary: pd.DataFrame, metric: str):
    """One row per model variant: mean, 95% CI, seed spread, seeds, and for accuracy McNemar's p."""
    scale, digits = schema.display(metric)
    header = ["mask", "ensemble", "mean", "95% CI (test images)", "seed sd", "seeds"]
    if metric == "accuracy":
        header.append("McNemar p vs baseline (b/c)")
    rows = []
    row_label = _row_labels(summary)
    for _, r in summary.iterrows():
        label = row_label[r["ensemble"]]
        if r.get("selection") == NO_VAL:
            rows.append([r["mask"], label, NOT_POSSIBLE] + [""] * (len(header) - 3))
            continue
        if metric not in r or pd.isna(r.get(metric)):
            continue
        if r.get("selection") == "val":
            label += f" (α = {r['alpha_star']} by seed)"
        line = [r["mask"], label, number(r[metric], scale=scale, digits=digits),
                interval(r[f"{metric}_ci_low"], r[f"{metric}_ci_high"], scale=scale, digits=digits) or MISSING,
                number(r[f"{metric}_seed_sd"], scale=scale, digits=digits),
                f"{r['n_seeds']}/{r['seeds_expected']}" + ("" if r["complete"] else " †")]
        if metric == "accuracy":
            p = r.get("mcnemar_p")
            line.append(MISSING if p is None or pd.isna(p)
                        else f"{p:.3g} ({int(r['mcnemar_b'])}/{int(r['mcnemar_c'])})")
        rows.append(line)
    return header, rows


def _chance_reference(summary: pd.DataFrame):
    """The summary row whose ``random_*`` and ``centre_*`` values a table shows as its chance rows (every
    row of one dataset and backbone has the same test images): the baseline's, else the first."""
    base = summary[summary["ensemble"] == "baseline"]
    return base.iloc[0] if len(base) else (summary.iloc[0] if len(summary) else None)


def metrics_table(summary: pd.DataFrame, names: list[str]):
    """One row per model variant, one column per metric: mean [95% CI]; then, for the metrics that have
    one, a row per chance reference (the ``random`` and ``centre`` maps on the same images)."""
    names = [m for m in names if m in summary and summary[m].notna().any()]
    header = ["mask", "ensemble"] + names
    rows = []
    row_label = _row_labels(summary)
    for _, r in summary.iterrows():
        if r.get("selection") == NO_VAL:
            rows.append([r["mask"], row_label[r["ensemble"]], NOT_POSSIBLE] + [""] * (len(names) - 1))
            continue
        cells = []
        for metric in names:
            scale, digits = schema.display(metric)
            if pd.isna(r.get(metric)):
                cells.append(MISSING)
                continue
            mark = f" {BELOW_CHANCE}" if at_or_below_chance(r, metric) else ""
            mark += f" {UNCHANGED}" if unchanged_by_randomisation(r, metric) else ""
            cells.append(with_interval(r[metric], r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high"), scale=scale,
                                       digits=digits) + mark)
        rows.append([r["mask"], row_label[r["ensemble"]]] + cells)
    reference = _chance_reference(summary)
    for name in schema.CHANCE_EXPLAINERS:
        columns = [f"{name}_{metric}" for metric in names]
        if reference is None or not any(c in reference and not pd.isna(reference.get(c)) for c in columns):
            continue
        cells = []
        for metric, column in zip(names, columns):
            scale, digits = schema.display(metric)
            value = reference.get(column)
            cells.append(with_interval(value, reference.get(column + "_ci_low"), reference.get(column + "_ci_high"),
                                       scale=scale, digits=digits))
        rows.append(["", f"Chance: {name}"] + cells)
    return header, rows


def _box_taus(row) -> str:
    """``; MaxBoxAccV2 τ (IoU 0.3 / 0.5 / 0.7) = …``: the thresholds a summary row chose on validation per IoU
    level of MaxBoxAccV2 (each seed's, for each level), or nothing."""
    chosen = [row.get(column) for column in schema.BOX_TAU_COLUMNS]
    if not all(isinstance(value, str) for value in chosen):
        return ""
    levels = " / ".join(f"{level:g}" for level in BOX_IOU_LEVELS)
    return f"; MaxBoxAccV2 τ (IoU {levels}) = {' · '.join(chosen)}"


def at_chance(df: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """One line per model whose test accuracy is not clearly above chance: its 95% CI reaches down to the
    share of the commonest test class (what always guessing it scores)."""
    lines = []
    if "accuracy_ci_low" not in summary:
        return lines
    models = summary.drop_duplicates(["dataset", "backbone", "mask", "ensemble"])
    labels = _row_labels(models) if len(models) else {}
    for _, r in models.iterrows():
        cells = df[(df["dataset"] == r["dataset"]) & (df["backbone"] == r["backbone"])]
        majority = pd.to_numeric(cells["majority_share"], errors="coerce").max()
        low = r.get("accuracy_ci_low")
        if pd.isna(majority) or low is None or pd.isna(low) or low > majority:
            continue
        mask = "" if r["mask"] == "none" else f", mask {r['mask']}"
        where = f"{component_name(r['dataset'])} · {component_name(r['backbone'])}"
        lines.append(f"{where}: {labels[r['ensemble']]}{mask} is at chance "
                     f"on test: accuracy {number(r['accuracy'], scale=100, digits=2)}% with its 95% CI from "
                     f"{number(low, scale=100, digits=2)}%, not above the commonest class's share "
                     f"({number(majority, scale=100, digits=2)}%)")
    return lines


def sections(df: pd.DataFrame, summary: pd.DataFrame, published: pd.DataFrame | None = None):
    """The leaderboard as ``(level, title, text or (header, rows))`` items, for markdown and HTML."""
    items = []
    for (dataset, backbone), group in summary.groupby(["dataset", "backbone"], sort=False):
        seeds = sorted(df[(df["dataset"] == dataset) & (df["backbone"] == backbone)]["seed"].unique())
        items.append((2, f"{dataset} · {backbone}", f"Seeds: {', '.join(map(str, seeds))}."))
        models = group.drop_duplicates(["mask", "ensemble"])
        paper = published_lookup(published, dataset)
        title = ACCURACY_TITLE + (" · reproduced / published (Δ)" if paper else "")
        items.append((3, title, table_one(models, "accuracy", paper)))
        if paper:
            items.append((4, "Published and reproduced", PUBLISHED_NOTE))
        items.append((4, "Accuracy detail", detail_table(models, "accuracy")))
        if group_columns(models) and models["worst_group_accuracy"].notna().any():
            items.append((3, "Accuracy (%) by test group, and the worst group's", group_table(models)))
        for explainer, sub in group[group["explainer"] != ""].groupby("explainer", sort=False):
            explained = sub.drop_duplicates(["mask", "ensemble"])
            fixed, validated = schema.table_one("explanation")
            items.append((3, f"{fixed.label} · {explainer}", table_one(explained, fixed.name)))
            if validated.name in explained and explained[validated.name].notna().any():
                items.append((3, f"{validated.label} · {explainer}", table_one(explained, validated.name)))
                labels = _row_labels(explained)
                items.append((4, f"τ* by seed · {explainer}",
                              [f"{labels[r['ensemble']]}, mask {r['mask']}: τ* = {r['tau_star']}{_box_taus(r)}"
                               for _, r in explained.iterrows() if isinstance(r.get("tau_star"), str)]))
            else:
                items.append((4, f"{validated.label} · {explainer}",
                              f"τ* (val): {NOT_POSSIBLE}; the Jaccard above is at the fixed threshold only, and "
                              f"MaxBoxAccV2 only at thresholds chosen on test."))
            items.append((4, f"Explanation metrics · {explainer}",
                          metrics_table(explained, schema.detail("explanation") + schema.names("sanity"))))
            items.append((4, f"Lift over the random map · {explainer}",
                          metrics_table(explained, [f"lift_{m}" for m in schema.names("explanation")])))
            faithful = [c for m in schema.family("faithfulness") for c in (m.name, *m.chance_columns())]
            if any(c in explained and explained[c].notna().any() for c in faithful):
                cells = df[(df["dataset"] == dataset) & (df["backbone"] == backbone) & (df["explainer"] == explainer)]
                counts = sorted({int(n) for n in pd.to_numeric(cells["faithfulness_n"], errors="coerce").dropna()})
                where = f" on {' / '.join(map(str, counts))} test images per seed" if counts else ""
                lower = [m.name for m in schema.family("faithfulness") if not m.higher_is_better]
                direction = f" ({', '.join(lower)}: lower is better)" if lower else ""
                items.append((4, f"Faithfulness · {explainer}{where}{direction}",
                              metrics_table(explained, faithful)))
            chains = sub[sub["segmenter"] != ""].groupby(["seeder", "segmenter"], sort=False)
            for (seeder, segmenter), seg in chains:
                for metric in schema.table_one("segmentation"):
                    items.append((3, f"{metric.label} · {explainer} → {seeder} → {segmenter}",
                                  table_one(seg, metric.name)))
                items.append((4, f"Segmentation metrics · {explainer} → {seeder} → {segmenter}",
                              metrics_table(seg, schema.names("segmentation"))))
    chance = at_chance(df, summary)
    if chance:
        items.append((2, "Models at chance", chance))
    failures = df[df["status"] != Status.DONE]
    if len(failures):
        def cell(r):
            parts = [r["dataset"], r["backbone"], f"seed={r['seed']}", r["mask"], r["ensemble"], r["explainer"],
                     r["seeder"], r["segmenter"]]
            return " ".join(str(p) for p in parts if p not in ("", None) and not pd.isna(p))

        lines = [f"{cell(r)}: {r['error']}" for _, r in failures.iterrows()]
        items.append((2, "Failed cells", lines))
    return items


NOTE = ("Values are means over seeds with a 95% bootstrap CI over test images in brackets; † marks a "
        "configuration missing some seeds. Accuracy is measured on raw test images for every model and "
        "ensemble; McNemar's exact test pools each seed's paired predictions against that seed's baseline. "
        f"α* (val) is the mixing weight chosen per seed on validation accuracy (ties to the larger α), τ* the "
        f"CAM threshold chosen on validation Jaccard; test is never read to choose. max_box_acc is MaxBoxAccV2 "
        f"as the paper reports it (its threshold per IoU level chosen on the test images it scores), max_box_acc_val_tau "
        f"the same with them chosen on validation. Chance rows are the random and centre maps on the same test "
        f"images; {BELOW_CHANCE} marks a value no better than the random map's (its lift, metric − random's in "
        f"the metric's better direction, is at most 0).")
SANITY_NOTE = (f"sanity_spearman and sanity_ssim (protocol.sanity) compare each map with the same explainer's map "
               f"of the model re-initialised from its target layer on (Adebayo et al. 2018; lower is better); "
               f"{UNCHANGED} marks a mean Spearman above {sanity.UNCHANGED_SPEARMAN}: maps that do not depend on "
               f"the model's learned top layers.")


def note(summary: pd.DataFrame) -> str:
    """The note under a leaderboard's title: how to read its values, and the sanity check's marks where
    the run measured it."""
    measured = "sanity_spearman" in summary and summary["sanity_spearman"].notna().any()
    return NOTE + (" " + SANITY_NOTE if measured else "")
PUBLISHED_NOTE = ("The published values are the paper's, whose α and best mask were read off the test set; they "
                  "are compared with the reproduced fixed-α cells. The α* (val) row is chosen on validation and "
                  "has no published counterpart.")


def _md_table(header, rows) -> str:
    def escape(value):
        text = str(value).replace("|", "\\|")
        return f"**{text}**" if isinstance(value, Best) else text

    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(df: pd.DataFrame, summary: pd.DataFrame, title: str = "xaibench leaderboard",
             published: pd.DataFrame | None = None, *, brief: bool = False, machines: str | None = None) -> str:
    """The leaderboard in markdown; ``brief`` keeps only the accuracy tables and the failures; ``machines``
    (``xaibench.machine.sentence``) says which machine computed the numbers, below the note."""
    failed = int((df["status"] != Status.DONE).sum())
    parts = [f"# {title}", "", f"{len(df)} cells, {failed} failed. {note(summary)}"]
    if machines and not brief:
        parts += ["", machines]
    for level, heading, body in sections(df, summary, published):
        accuracy = heading.startswith(schema.get("accuracy").label)
        if brief and (level > 2 and not accuracy or heading == "Models at chance"):
            continue
        parts += ["", "#" * level + " " + heading, ""]
        if isinstance(body, tuple):
            parts.append(_md_table(*body))
        elif isinstance(body, list):
            parts += [f"- {line}" for line in body]
        else:
            parts.append(body)
    return "\n".join(parts) + "\n"


def write(out_dir: Path, df: pd.DataFrame, summary: pd.DataFrame, title: str = "xaibench leaderboard",
          published: pd.DataFrame | None = None, *, machines: str | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard_summary.csv"]
    atomic_write_text(paths[0], markdown(df, summary, title, published, machines=machines))
    atomic_write_text(paths[1], df.drop(columns=["cell_id"]).to_csv(index=False))
    atomic_write_text(paths[2], summary.to_csv(index=False))
    return paths
