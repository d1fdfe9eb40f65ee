"""Figures of a run, written as PNG files under ``DIR/figures/``, drawn from prepared results
(``xaibench.pipeline.exhibits``) and tables; nothing here runs a component or reads the plan.

- ``fig1_masks_<dataset>.png``: the paper's Fig. 1, every mask of the grid applied to a few annotated
  training tiles.
- ``fig2_<dataset>_<chain>.png``: the paper's Fig. 2 style overlays, per dataset and
  explainer → seeder → segmenter chain: rows are test tiles, columns the baseline and each masked
  ensemble; each panel shows the tile, the saliency heat map, the seed points as green stars, the
  predicted mask's contour (yellow) and the ground-truth contour (cyan).
- ``accuracy_vs_alpha_<dataset>_<backbone>.png``: accuracy against the mixing weight α, per mask.
- ``loop_rounds.png`` and ``loop_annotations_<n>.png``: the annotation loop's measurements by round, and
  the training tiles whose annotation moved most.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from xaibench.pipeline.records import AnnotationSeries, MaskExamples, Overlays
from xaibench.text import slug


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short(label: str, width: int = 70) -> str:
    """A component label for a title: path values cut to their last part, wrapped at ``width``."""
    import textwrap

    text = re.sub(r"(?<==)[^,()]*[/\\]([^,()/\\]+)", r"…/\1", str(label))
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def _save(fig, path: Path, legend: bool = False, top: float = 0.9) -> Path:
    """Write ``fig`` as PNG; ``legend``: leave room below for a figure legend (and a colour bar, which
    tight_layout cannot place, so the layout is set by hand) and above ``top`` for the title."""
    plt = _pyplot()
    if legend:
        fig.subplots_adjust(left=0.02, right=0.86, top=top, bottom=0.08, wspace=0.05, hspace=0.12)
    else:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Names:
    """Unique file names under one folder: a repeated stem gets ``_2``, ``_3``, ..."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.used: set[str] = set()

    def __call__(self, stem: str) -> Path:
        name, n = slug(stem, 80), 1
        while name in self.used:
            n += 1
            name = f"{slug(stem, 80)}_{n}"
        self.used.add(name)
        return self.folder / f"{name}.png"


def fig1_masks(examples: MaskExamples, path: Path) -> Path:
    plt = _pyplot()
    columns = examples.columns
    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows), squeeze=False)
    for col, (name, batch) in enumerate(columns.items()):
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(batch[row])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(short(name, 24), fontsize=9)
            if col == 0:
                ax.set_ylabel(examples.classes[row], fontsize=9)
    fig.suptitle(f"{short(examples.dataset)}: annotated training tiles, raw and masked (rows: class)", fontsize=9)
    return _save(fig, path)


def fig2_overlays(overlays: Overlays, path: Path) -> Path:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    columns = overlays.columns
    rows = max(p.row for p in overlays.panels) + 1
    # at least three panels wide, so one or two columns still leave room for the title, key and colour bar
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.4 * max(len(columns), 3), 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for panel in overlays.panels:
        ax = axes[panel.row, columns.index(panel.column)]
        ax.imshow(panel.image)
        ax.imshow(panel.saliency, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        if panel.truth.any():
            ax.contour(panel.truth.astype(float), levels=[0.5], colors="cyan", linewidths=1)
        if panel.prediction is not None and panel.prediction.any():
            ax.contour(panel.prediction.astype(float), levels=[0.5], colors="yellow", linewidths=1)
        if len(panel.points):
            pos = panel.points[panel.labels == 1]
            neg = panel.points[panel.labels == 0]
            ax.scatter(pos[:, 0], pos[:, 1], marker="*", s=120, c="lime", edgecolors="black", linewidths=0.5)
            if len(neg):
                ax.scatter(neg[:, 0], neg[:, 1], marker="x", s=50, c="red")
        for x0, y0, x1, y1 in panel.boxes:  # pixel edges; imshow puts pixel c's centre at c
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="magenta",
                                   linewidth=1.2, linestyle="--"))
        if panel.row == 0:
            ax.set_title(short(panel.column, 28), fontsize=8)
    title = short(f"{overlays.dataset} · {' → '.join(overlays.chain)}", 90)
    fig.suptitle(title, fontsize=9)
    _legend_and_colour_bar(fig, axes, plt, boxes=any(len(panel.boxes) for panel in overlays.panels),
                           centred=len(columns) < 3)
    # each further title line (0.16 in at 9 pt) moves the panels down, clear of their column titles
    return _save(fig, path, legend=True, top=0.9 - 0.16 * title.count("\n") / fig.get_figheight())


def _legend_and_colour_bar(fig, axes, plt, *, boxes: bool = False, centred: bool = False) -> None:
    """Fig. 2's key: what the stars, crosses, boxes (where there are box prompts) and contours are, and the
    saliency colour scale. ``centred``: the panels stay centred in their space (a figure padded out to
    three panels' width) instead of moving up to the colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="*", linestyle="", markersize=10, markerfacecolor="lime",
                      markeredgecolor="black", label="seed point"),
               Line2D([], [], marker="x", linestyle="", markersize=7, color="red", label="negative point"),
               Line2D([], [], color="yellow", label="predicted mask"),
               Line2D([], [], color="cyan", label="ground truth")]
    if boxes:
        handles.insert(2, Line2D([], [], color="magenta", linestyle="--", label="prompt box"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes.ravel().tolist(), fraction=0.025,
                       pad=0.02, **({"panchor": False} if centred else {}))
    bar.set_label("saliency (min-max normalised)", fontsize=8)


def accuracy_vs_alpha(curves: pd.DataFrame, path_for) -> list[Path]:
    """One figure per dataset and backbone: mean test accuracy over seeds against α, a line per mask (and
    rule, where several have a mixing weight), and the baseline's mean as a dashed line. ``path_for(stem)``
    gives each figure's path."""
    plt = _pyplot()
    written = []
    for (dataset, backbone), group in curves.groupby(["dataset", "backbone"], sort=False):
        several_rules = group["rule"].nunique() > 1
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for (mask, rule), lines in group.groupby(["mask", "rule"], sort=False):
            mean = lines.groupby("alpha", sort=True)["accuracy"].mean()
            ax.plot(mean.index, 100 * mean.to_numpy(), marker=".", label=f"{mask} · {rule}" if several_rules else mask)
        baseline = group.drop_duplicates("seed")["baseline"]
        ax.axhline(100 * baseline.mean(), color="black", linestyle="--", label="baseline")
        ax.set_xlabel("α (weight of the raw-image model)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(short(f"{dataset} · {backbone} · mean over {len(baseline)} seed(s)", 80), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, path_for(f"accuracy_vs_alpha_{dataset}_{backbone}")))
    return written


def run_figures(out_dir: Path, masks: list[MaskExamples], overlays: list[Overlays],
                curves: pd.DataFrame | None) -> list[tuple[str, object]]:
    """Every figure of a run, as ``(name, drawing function)`` pairs for the caller to draw one at a time
    (so one that fails is recorded and the others are still drawn). Each function returns the paths it
    wrote."""
    names = Names(Path(out_dir) / "figures")
    jobs = []
    for examples in masks:
        path = names(f"fig1_masks_{examples.dataset}")
        jobs.append((path.name, lambda e=examples, p=path: [fig1_masks(e, p)]))
    for overlay in overlays:
        path = names("_".join(["fig2", overlay.dataset, *overlay.names]))
        jobs.append((path.name, lambda o=overlay, p=path: [fig2_overlays(o, p)]))
    if curves is not None and len(curves):
        jobs.append(("accuracy_vs_alpha", lambda: accuracy_vs_alpha(curves, names)))
    return jobs


# -- the annotation loop -----------------------------------------------------------------------------------


def loop_rounds(summary: pd.DataFrame, varying: list[str], titles: dict[str, str], path: Path) -> Path:
    """Each measurement against the round, per configuration (the ``varying`` label columns), mean over
    seeds with the t interval as a band."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    configurations = list(summary.groupby(varying or ["mask"], sort=False, dropna=False))
    panels = ("annotation_iou", "accuracy", "jaccard", "proposal_iou", "accepted", "changed")
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4), squeeze=False)
    for ax, metric in zip(axes.flat, panels):
        for label, group in configurations:
            name = " · ".join(str(v) for v in (label if isinstance(label, tuple) else (label,)))
            line, = ax.plot(group["round"], group[metric], marker="o", label=name)
            ax.fill_between(group["round"], group[f"{metric}_ci_low"], group[f"{metric}_ci_high"],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(titles[metric], fontsize=8)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def loop_annotations(series: AnnotationSeries, path: Path) -> Path:
    """Rows: training tiles; columns: each round's annotation (yellow) over the reference (cyan)."""
    plt = _pyplot()
    rows, columns = len(series.images), len(series.columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows), squeeze=False)
    for r in range(rows):
        for c, (name, masks, scores) in enumerate(series.columns):
            ax = axes[r, c]
            ax.imshow(series.images[r])
            for mask, colour in ((series.reference[r], "cyan"), (masks[r], "yellow")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: IoU {scores[r]:.2f}", fontsize=8)
    fig.suptitle(series.title, fontsize=8)
    return _save(fig, path)


def loop_figures(out_dir: Path, summary: pd.DataFrame, varying: list[str], titles: dict[str, str],
                 series: list[AnnotationSeries]) -> list[tuple[str, object]]:
    """The loop's figures as ``(name, drawing function)`` pairs, like ``run_figures``."""
    figures = Path(out_dir) / "figures"
    jobs = []
    if summary is not None and len(summary):
        jobs.append(("loop_rounds.png", lambda: [loop_rounds(summary, varying, titles, figures / "loop_rounds.png")]))
    for n, one in enumerate(series, start=1):
        path = figures / f"loop_annotations_{n}.png"
        jobs.append((path.name, lambda s=one, p=path: [loop_annotations(s, p)]))
    return jobs


def remove_stale(earlier, drawn) -> None:
    """Delete the figures of ``earlier`` (drawn by an earlier, larger grid) that are not among ``drawn``
    now; a run and the loop each pass the figures they own, so neither deletes the other's."""
    drawn = {Path(p) for p in drawn}
    for path in list(earlier):  # listed first: deleting while a glob is read could skip files
        if Path(path) not in drawn:
            Path(path).unlink(missing_ok=True)
