"""What the figures show, prepared from a run's results: plain arrays and frames, no drawing.

Everything that needs a component (masks applied to tiles for Fig. 1, ensemble rules re-mixed at other
α values for the accuracy curve) or the plan (which artifact belongs to which cell) happens here, so that
``xaibench.presentation.figures`` only draws what it is given.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from xaibench.kit.contracts import Prompts, apply_ensemble, band_arguments, capability
from xaibench.pipeline.artifacts import Artifacts, Memo, accepted, prompts_at, segmentations
from xaibench.pipeline.metrics import accuracy, iou
from xaibench.pipeline.plan import Plan, RoundPlan
from xaibench.pipeline.records import (AnnotationSeries, MaskExamples, OverlayPanel, Overlays, component_label,
                                       variant_label)
from xaibench.pipeline.training import to_tensor


def _finished(plan: Plan, artifacts: Artifacts, keys) -> bool:
    return all(artifacts.exists(plan.stages[k].kind, k) for k in keys)


# Bands outside the colour composite (near-infrared, say) shown in grey beside the raw tiles in Fig. 1
SHOWN_BANDS = 3


def mask_examples(plan: Plan, artifacts: Artifacts, registry, *, n_images: int = 3) -> list[MaskExamples]:
    """Per dataset: up to ``n_images`` annotated training tiles under every mask of the grid, as their
    colour composite; beside the raw tiles, each band outside the composite (at most ``SHOWN_BANDS``) in grey."""
    import torch

    out = []
    for data_key, cells in _by_data(plan, artifacts).items():
        masks = {cp.cell.mask.label: cp.cell.mask for cp in cells if cp.cell.mask is not None}
        train = artifacts.data(data_key, "train")
        annotated = np.flatnonzero(train["has_mask"])[:n_images]
        if not len(annotated) or not masks:
            continue
        bands = artifacts.bands(data_key)
        x = to_tensor(train["images"][annotated])
        foreground = torch.from_numpy(train["masks"][annotated])[:, None]
        columns = {"raw": x[:, list(bands.rgb)]}
        for position in bands.others[:SHOWN_BANDS]:
            columns[f"{bands.names[position]} band"] = x[:, [position] * 3]
        for label, choice in masks.items():
            mask = registry.create("masks", choice.name, **choice.params)
            columns[label] = mask(x, foreground, **band_arguments(mask, "masks", bands))[:, list(bands.rgb)]
        classes = [str(train["classes"][label]) for label in train["labels"][annotated]]
        out.append(MaskExamples(cells[0].cell.dataset.name, classes,
                                {k: v.permute(0, 2, 3, 1).clamp(0, 1).numpy() for k, v in columns.items()}))
    return out


def _by_data(plan: Plan, artifacts: Artifacts) -> dict[str, list]:
    by_data: dict[str, list] = {}
    for cp in plan.cells:
        if _finished(plan, artifacts, cp.keys):
            by_data.setdefault(cp.data, []).append(cp)
    return by_data


def overlays(plan: Plan, artifacts: Artifacts, *, n_images: int = 4) -> list[Overlays]:
    """Fig. 2 per dataset and chain, for the lowest seed and the first backbone: one column per model
    variant (the baseline and, per mask, its first ensemble in α order)."""
    memo = Memo(artifacts)
    out = []
    for data_key, cells in _by_data(plan, artifacts).items():
        test = artifacts.data(data_key, "test")
        bands = artifacts.bands(data_key)
        seed = min(cp.cell.seed for cp in cells)
        chains: dict[tuple, list] = {}
        for cp in cells:
            if cp.explain and cp.cell.seed == seed and cp.cell.backbone == cells[0].cell.backbone:
                chains.setdefault((cp.cell.explainer, cp.cell.seeder, cp.cell.segmenter), []).append(cp)
        for chain, chain_cells in chains.items():
            columns: dict[str, object] = {}
            seen_masks = set()

            def order(cp):
                alpha = cp.labels["alpha"]
                return (cp.cell.mask is not None, alpha if not math.isnan(alpha) else math.inf)

            for cp in sorted(chain_cells, key=order):
                mask = cp.cell.mask.label if cp.cell.mask else "baseline"
                if mask in seen_masks:
                    continue
                seen_masks.add(mask)
                name = ("baseline" if cp.cell.mask is None
                        else f"{mask} {variant_label(cp.labels['ensemble'], cp.labels['alpha'])}")
                columns[name] = cp
            panels = []
            for column, cp in columns.items():
                explained = memo("explain", cp.explain)
                seeds = memo("seeds", cp.seeds) if cp.seeds else None
                segmented = segmentations(memo("segment", cp.segment), cp.segment_index) if cp.segment else None
                for row in range(min(n_images, len(explained["index"]))):
                    i = explained["index"][row]
                    prompts = prompts_at(seeds, row) if seeds else Prompts(np.zeros((0, 2)), np.zeros(0, np.int64))
                    panels.append(OverlayPanel(
                        row, column, bands.composite(test["images"][i]), explained["maps"][row].astype(np.float32),
                        prompts.points, prompts.labels,
                        segmented[row] if segmented is not None else None, test["references"][i],
                        prompts.boxes if prompts.boxes is not None else np.zeros((0, 4), np.float32)))
            if panels:
                out.append(Overlays(chain_cells[0].cell.dataset.name, [c.label for c in chain if c],
                                    [c.name for c in chain if c], list(columns), panels))
    return out


ALPHA_STEP = 0.05


def alpha_curves(plan: Plan, artifacts: Artifacts, registry, *, step: float = ALPHA_STEP) -> pd.DataFrame:
    """Test accuracy of each masked model's ensemble against its mixing weight α from 0 to 1 in ``step``,
    from cached logits, for ensemble rules that declare a ``mixing_parameter``; one row per dataset,
    backbone, mask, rule, seed and α, with the seed's baseline accuracy. Empty when no rule has one."""
    import torch

    memo = Memo(artifacts)
    alphas = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    seen, rows = set(), []
    for cp in plan.cells:
        ensemble = cp.cell.ensemble
        if ensemble is None or cp.masked_logits is None or not _finished(plan, artifacts,
                                                                         [cp.raw_logits, cp.masked_logits]):
            continue
        factory = registry.get("ensembles", ensemble.name).factory
        parameter = capability(factory, "mixing_parameter", "ensembles")
        if parameter is None:
            continue
        rule = {k: v for k, v in ensemble.params.items() if k != parameter}
        rule_label = component_label(ensemble.name, rule)
        key = (cp.data, cp.cell.backbone, cp.cell.mask, rule_label, cp.cell.seed)
        if key in seen:
            continue
        seen.add(key)
        labels = artifacts.data(cp.data, "test")["labels"]
        raw = torch.from_numpy(memo("logits", cp.raw_logits)["test"])
        masked = torch.from_numpy(memo("logits", cp.masked_logits)["test"])
        baseline = accuracy(raw.numpy(), labels)
        for a in alphas:
            mixed = apply_ensemble(registry.create("ensembles", ensemble.name, **{**rule, parameter: float(a)}), raw,
                                   masked)
            rows.append({"dataset": cp.cell.dataset.name, "backbone": cp.labels["backbone"],
                         "mask": cp.labels["mask"], "rule": rule_label, "seed": cp.cell.seed, "alpha": float(a),
                         "accuracy": accuracy(mixed.detach().numpy(), labels), "baseline": baseline})
    return pd.DataFrame(rows, columns=["dataset", "backbone", "mask", "rule", "seed", "alpha", "accuracy",
                                       "baseline"])


def annotation_series(plans: dict, artifacts: Artifacts, *, n_images: int = 4) -> list[AnnotationSeries]:
    """Per loop configuration, its lowest-seed chain: the ``n_images`` training tiles whose annotation's
    IoU to the reference moved most from round 0 to the last round, with each round's annotation."""
    chosen: dict[tuple, tuple] = {}
    for chain, rounds in plans.items():
        labels = rounds[0].labels
        key = tuple(v for k, v in labels.items() if k != "seed")
        if chain.cell.seed < chosen.get(key, (math.inf,))[0]:
            chosen[key] = (chain.cell.seed, rounds)
    out = []
    for _, rounds in chosen.values():
        rounds: list[RoundPlan]
        data, train = rounds[0].data, artifacts.data(rounds[0].data, "train")
        final = artifacts.load("accept", rounds[-1].accept)
        index = final["index"]
        masks = [artifacts.annotations(data, rp.annotations)[index] for rp in rounds] + [accepted(final)[index]]
        reference = train["references"][index]
        scores = np.stack([iou(m, reference) for m in masks])  # (rounds + 1, M)
        moved = np.nan_to_num(np.abs(scores[-1] - scores[0]), nan=-1.0)
        rows = np.argsort(-moved, kind="stable")[:n_images]
        names = [f"round {c}" if c < len(rounds) else f"after round {c - 1}" for c in range(len(masks))]
        chain = rounds[0].chain
        title = " · ".join([chain.cell.dataset.name, chain.cell.mask.name, chain.cell.seeder.name,
                            chain.cell.segmenter.name, chain.acceptor.name, f"seed {chain.cell.seed}"])
        images = artifacts.bands(data).composite(train["images"][index[rows]])
        out.append(AnnotationSeries(title, images, reference[rows],
                                    [(n, m[rows], s[rows]) for n, m, s in zip(names, masks, scores)]))
    return out
