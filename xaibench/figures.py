"""Figures of a run, written as PNG files under ``DIR/figures/``.

- ``fig1_masks.png``: the paper's Fig. 1, every mask of the grid applied to a few annotated training tiles.
- ``fig2_<dataset>_<chain>.png``: the paper's Fig. 2 style overlays, per dataset and
  explainer → seeder → segmenter chain: rows are test tiles, columns the baseline and each masked
  ensemble; each panel shows the tile, the saliency heat map, the seed points as green stars, the
  predicted mask's contour (yellow) and the ground-truth contour (cyan).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .stages import unpack_masks
from .store import load_arrays


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:80]


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fig1_masks(images: np.ndarray, masks: np.ndarray, mask_fns: dict, path: Path) -> Path:
    """``images`` uint8 (N, H, W, 3) with ``masks`` bool (N, H, W); ``mask_fns`` name → Mask component."""
    import torch

    from .training import to_tensor

    plt = _pyplot()
    x = to_tensor(images)
    fg = torch.from_numpy(masks)[:, None]
    columns = {"raw": x, **{name: fn(x, fg) for name, fn in mask_fns.items()}}
    fig, axes = plt.subplots(len(images), len(columns), figsize=(2.2 * len(columns), 2.2 * len(images)),
                             squeeze=False)
    for col, (name, batch) in enumerate(columns.items()):
        for row in range(len(images)):
            ax = axes[row, col]
            ax.imshow(batch[row].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    return _save(fig, path)


def fig2_overlays(panels: list[dict], columns: list[str], rows: int, title: str, path: Path) -> Path:
    """``panels``: dicts with row, column (name), image uint8 (H, W, 3), saliency float (H, W),
    points float (N, 2) as (x, y), labels (N,), prediction bool (H, W) or None, truth bool (H, W)."""
    plt = _pyplot()
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.4 * len(columns), 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for panel in panels:
        ax = axes[panel["row"], columns.index(panel["column"])]
        ax.imshow(panel["image"])
        ax.imshow(panel["saliency"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        if panel["truth"].any():
            ax.contour(panel["truth"].astype(float), levels=[0.5], colors="cyan", linewidths=1)
        if panel.get("prediction") is not None and panel["prediction"].any():
            ax.contour(panel["prediction"].astype(float), levels=[0.5], colors="yellow", linewidths=1)
        points, labels = panel["points"], panel["labels"]
        if len(points):
            pos = points[labels == 1]
            neg = points[labels == 0]
            ax.scatter(pos[:, 0], pos[:, 1], marker="*", s=120, c="lime", edgecolors="black", linewidths=0.5)
            if len(neg):
                ax.scatter(neg[:, 0], neg[:, 1], marker="x", s=50, c="red")
        if panel["row"] == 0:
            ax.set_title(panel["column"], fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def write_run_figures(plan, runner, arrays, registry, out_dir: Path, *, n_images: int = 4) -> list[Path]:
    """Fig. 1 per dataset and Fig. 2 per dataset and chain, from cached artifacts of finished cells."""
    written = []
    figures = Path(out_dir) / "figures"
    done = [cp for cp in plan.cells if all(runner.artifact_exists(plan.stages[k]) for k in cp.keys)]
    by_data: dict[str, list] = {}
    for cp in done:
        by_data.setdefault(cp.data, []).append(cp)
    used: set[str] = set()

    def unique(stem: str) -> Path:
        name, n = _slug(stem), 1
        while name in used:
            n += 1
            name = f"{_slug(stem)}_{n}"
        used.add(name)
        return figures / f"{name}.png"

    for data_key, cells in by_data.items():
        dataset = cells[0].cell.labels()["dataset"]
        dataset_name = cells[0].cell.dataset.name
        train = runner.data(data_key, "train")
        annotated = np.flatnonzero(train["has_mask"])[:3]
        masks = {cp.cell.mask.label: cp.cell.mask for cp in cells if cp.cell.mask is not None}
        if len(annotated) and masks:
            fns = {label: registry.create("masks", m.name, **m.params) for label, m in masks.items()}
            written.append(fig1_masks(train["images"][annotated], train["masks"][annotated], fns,
                                      unique(f"fig1_masks_{dataset_name}")))
        test = runner.data(data_key, "test")
        seed = min(cp.cell.seed for cp in cells)
        chains: dict[tuple, list] = {}
        for cp in cells:
            if cp.explain and cp.cell.seed == seed and cp.cell.backbone == cells[0].cell.backbone:
                chains.setdefault((cp.cell.explainer, cp.cell.seeder, cp.cell.segmenter), []).append(cp)
        for chain, chain_cells in chains.items():
            # one column per model variant: the baseline and, per mask, its lowest alpha
            columns: dict[str, object] = {}
            for cp in sorted(chain_cells, key=lambda c: (c.cell.mask is not None, c.cell.labels()["alpha"])):
                name = "baseline" if cp.cell.mask is None else f"{cp.cell.mask.label} α={cp.cell.labels()['alpha']:g}"
                key = cp.cell.mask.label if cp.cell.mask else "baseline"
                if key not in {k for k, _ in columns.values()}:
                    columns[name] = (key, cp)
            panels = []
            for column, (_, cp) in columns.items():
                explained = arrays("explain", cp.explain)
                seeds = arrays("seeds", cp.seeds) if cp.seeds else None
                segmented = None
                if cp.segment:
                    seg = arrays("segment", cp.segment)
                    segmented = unpack_masks(seg, cp.segment_index)
                for row in range(min(n_images, len(explained["index"]))):
                    i = explained["index"][row]
                    keep = seeds["labels"][row] >= 0 if seeds else np.zeros(0, bool)
                    panels.append({
                        "row": row, "column": column, "image": test["images"][i],
                        "saliency": explained["maps"][row].astype(np.float32), "truth": test["references"][i],
                        "points": seeds["points"][row][keep] if seeds else np.zeros((0, 2)),
                        "labels": seeds["labels"][row][keep] if seeds else np.zeros(0),
                        "prediction": segmented[row] if segmented is not None else None,
                    })
            rows = max((p["row"] for p in panels), default=-1) + 1
            if rows:
                title = f"{dataset} · {' → '.join(c.label for c in chain if c)}"
                stem = "_".join(["fig2", dataset_name] + [c.name for c in chain if c])
                written.append(fig2_overlays(panels, list(columns), rows, title, unique(stem)))
    return written


ALPHA_STEP = 0.05


def accuracy_vs_alpha(plan, runner, arrays, registry, out_dir: Path, *, step: float = ALPHA_STEP) -> list[Path]:
    """Per dataset and backbone: test accuracy of each mask's ensemble against α from 0 to 1 in ``step``
    (mean over seeds), from cached logits; only ensemble rules with an ``alpha`` parameter are swept."""
    import torch

    from .grid import canonical_json
    from .metrics import accuracy

    alphas = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    groups: dict[tuple, dict] = {}
    for cp in plan.cells:
        ensemble = cp.cell.ensemble
        if ensemble is None or "alpha" not in ensemble.params or cp.masked_logits is None:
            continue
        if not (runner.artifact_exists(plan.stages[cp.raw_logits]) and runner.artifact_exists(plan.stages[cp.masked_logits])):
            continue
        key = (cp.data, cp.cell.dataset.name, cp.cell.backbone.label)
        rule = {k: v for k, v in ensemble.params.items() if k != "alpha"}
        groups.setdefault(key, {})[(cp.cell.mask.label, ensemble.name, canonical_json(rule), cp.cell.seed)] = (
            cp.raw_logits, cp.masked_logits, ensemble.name, rule)
    written = []
    plt = _pyplot()
    for (data_key, dataset_name, backbone), entries in groups.items():
        labels = runner.data(data_key, "test")["labels"]
        curves: dict[str, list] = {}
        baseline: dict[int, float] = {}
        for (mask, _, _, seed), (raw_key, masked_key, name, rule) in entries.items():
            raw = torch.from_numpy(arrays("logits", raw_key)["test"])
            masked = torch.from_numpy(arrays("logits", masked_key)["test"])
            baseline[seed] = accuracy(raw.numpy(), labels)
            curve = [accuracy(registry.create("ensembles", name, **rule, alpha=float(a))(raw, masked).numpy(), labels)
                     for a in alphas]
            curves.setdefault(mask, []).append(curve)
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for mask, seed_curves in curves.items():
            ax.plot(alphas, 100 * np.mean(seed_curves, axis=0), marker=".", label=mask)
        ax.axhline(100 * np.mean(list(baseline.values())), color="black", linestyle="--", label="baseline")
        ax.set_xlabel("α (weight of the raw-image model)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset_name} · {backbone} · mean over {len(baseline)} seed(s)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, Path(out_dir) / "figures" / f"{_slug(f'accuracy_vs_alpha_{dataset_name}_{backbone}')}.png"))
    return written


# -- the annotation loop -----------------------------------------------------------------------------------


def loop_figures(summary, plans: dict, runner, out_dir: Path, *, n_images: int = 4) -> list[Path]:
    """``loop_rounds.png``: each measurement against the round, per configuration, mean over seeds with
    the t interval as a band; ``loop_annotations_<n>.png`` per configuration: the training tiles (of the
    lowest seed) whose annotation moved most, with the reference (cyan) and each round's annotation
    (yellow) and its IoU to the reference."""
    from matplotlib.ticker import MaxNLocator

    from .loop import METRICS, varying_labels
    from .metrics import iou

    figures = Path(out_dir) / "figures"
    if summary is None or not len(summary):
        for stale in figures.glob("loop_*.png"):
            stale.unlink()
        return []
    plt = _pyplot()
    varying = varying_labels(summary) or ["mask"]
    configurations = list(summary.groupby(varying, sort=False, dropna=False))
    panels = ("annotation_iou", "accuracy", "jaccard", "proposal_iou", "accepted", "changed")
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.4), squeeze=False)
    for ax, metric in zip(axes.flat, panels):
        for label, group in configurations:
            name = " · ".join(str(v) for v in (label if isinstance(label, tuple) else (label,)))
            line, = ax.plot(group["round"], group[metric], marker="o", label=name)
            ax.fill_between(group["round"], group[f"{metric}_ci_low"], group[f"{metric}_ci_high"],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(METRICS[metric], fontsize=8)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    written = [_save(fig, figures / "loop_rounds.png")]

    for n, rounds in enumerate(_lowest_seed_chains(plans), start=1):
        data, train = rounds[0].data, runner.data(rounds[0].data, "train")
        final = load_arrays(runner.path("accept", rounds[-1].accept))
        index = final["index"]
        columns = [runner.annotations(data, rp.annotations)[index] for rp in rounds]
        columns.append(unpack_masks(final)[index])
        reference = train["references"][index]
        scores = np.stack([iou(c, reference) for c in columns])  # (rounds + 1, M)
        moved = np.nan_to_num(np.abs(scores[-1] - scores[0]), nan=-1.0)
        rows = np.argsort(-moved, kind="stable")[:n_images]
        fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False)
        for r, row in enumerate(rows):
            for c, annotation in enumerate(columns):
                ax = axes[r, c]
                ax.imshow(train["images"][index[row]])
                for mask, colour in ((reference[row], "cyan"), (annotation[row], "yellow")):
                    if mask.any():
                        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1)
                ax.set_xticks([])
                ax.set_yticks([])
                name = f"round {c}" if c < len(rounds) else f"after round {c - 1}"
                ax.set_title(f"{name}: IoU {scores[c, row]:.2f}", fontsize=8)
        chain = rounds[0].chain
        fig.suptitle(" · ".join([chain.cell.dataset.name, chain.cell.mask.name, chain.cell.seeder.name,
                                 chain.cell.segmenter.name, chain.acceptor.name, f"seed {chain.cell.seed}"]), fontsize=8)
        written.append(_save(fig, figures / f"loop_annotations_{n}.png"))
    for stale in set(figures.glob("loop_*.png")) - set(written):  # from an earlier, larger loop grid
        stale.unlink()
    return written


def _lowest_seed_chains(plans: dict) -> list[list]:
    """The round plans of the lowest-seed chain of every configuration that has a finished round."""
    chosen: dict[tuple, object] = {}
    for chain, rounds in plans.items():
        key = tuple(v for k, v in chain.labels().items() if k != "seed")
        if chain.cell.seed < chosen.get(key, (float("inf"),))[0]:
            chosen[key] = (chain.cell.seed, rounds)
    return [rounds for _, rounds in chosen.values()]
