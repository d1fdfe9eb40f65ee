"""Scoring: the metrics of every cell and of every loop round, from cached artifacts (no model is run).

``score_cells`` gives each cell's ``CellRow`` (mean scores) and writes its per-image scores to
``DIR/cells/<cell id>.npz`` (test ids, correctness, per-image Jaccard and segmentation IoU), which
confidence intervals and paired tests need. ``round_row`` does the same for one round of a loop chain.
A scoring error fails its cell (or chain), never the command.
"""

from __future__ import annotations

import numpy as np

from xaibench.errors import ComponentError, ContractViolation
from xaibench.kit.contracts import apply_ensemble
from xaibench.pipeline import metrics, schema, stats
from xaibench.pipeline.artifacts import CHUNK, Artifacts, Memo, map_chunks, segmentations
from xaibench.pipeline.grid import Choice, digest
from xaibench.pipeline.plan import CellPlan, Plan, RoundPlan
from xaibench.pipeline.records import CellRow, Failure, RoundRow, Status
from xaibench.pipeline.store import Store, file_digest, save_arrays
from xaibench.pipeline.training import to_tensor

# Bump when scoring changes, so cells scored by an older xaibench are scored again.
SCORING_VERSION = 3



def mixed_logits(ensemble: Choice | None, registry, raw: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
    """The logits (N, C) a cell is scored on: the raw model's, or the ``ensemble`` choice's mix of both."""
    if ensemble is None:
        return raw
    import torch

    rule = registry.create("ensembles", ensemble.name, **ensemble.params)
    try:
        out = apply_ensemble(rule, torch.from_numpy(raw), torch.from_numpy(masked))
    except ContractViolation as exc:
        raise ComponentError(registry.who("ensembles", ensemble.name, ensemble.label), str(exc)) from None
    return out.detach().numpy()


def score_key(cp: CellPlan, cam_threshold: float) -> str:
    """What a cell's scores depend on: its stages, its seeder's slot, its ensemble rule, the threshold."""
    ensemble = cp.cell.ensemble.ident if cp.cell.ensemble else None
    return digest([SCORING_VERSION, cp.keys, cp.segment_index, ensemble, cam_threshold])


def scores_key(plan: Plan, cam_threshold: float) -> str:
    """One key for every cell's scores: unchanged, nothing drawn from them needs drawing again."""
    return digest(sorted(score_key(cp, cam_threshold) for cp in plan.cells))


def score_cell(cp: CellPlan, artifacts: Artifacts, memo: Memo, registry, cam_threshold: float) -> tuple[dict, dict]:
    """The metrics of one cell. Returns ``(means, per_image)``: the mean scores, and the per-image arrays
    they come from (test ids, correctness, per-image Jaccard and segmentation IoU)."""
    test = artifacts.data(cp.data, "test")
    labels = test["labels"]
    logits = {split: mixed_logits(cp.cell.ensemble, registry, memo("logits", cp.raw_logits)[split],
                                  memo("logits", cp.masked_logits)[split] if cp.cell.ensemble is not None else None)
              for split in ("test", "val")}
    correct = np.argmax(logits["test"], axis=1) == labels
    val_labels = artifacts.data(cp.data, "val")["labels"]
    out = {"accuracy": metrics.accuracy(logits["test"], labels), "n_test": int(len(labels)),
           # what always guessing the commonest test class scores
           "majority_share": float(np.bincount(labels).max() / len(labels)) if len(labels) else float("nan"),
           # what α* is chosen on (``leaderboard.choose_alpha``); NaN where there is no val split
           "val_accuracy": metrics.accuracy(logits["val"], val_labels) if len(val_labels) else float("nan"),
           "n_val": int(len(val_labels))}
    per_image = {"ids": test["ids"], "correct": correct}
    groups = test["groups"]
    if len(groups) and (groups != "").any():
        per_image["group"] = groups
        out.update(worst_group_accuracy=stats.worst_group(correct[None], groups),
                   n_groups=len(set(groups.tolist()) - {""}))
    if cp.explain:
        explained = memo("explain", cp.explain)
        if ("explanation scores", cp.explain) not in memo.loaded:  # shared by every cell of this explanation
            memo.loaded[("explanation scores", cp.explain)] = explanation_scores(explained, test["references"],
                                                                              cam_threshold)
        scores, means, sweeps = memo.loaded[("explanation scores", cp.explain)]
        out.update(means)
        out["jaccard_n"] = int(np.isfinite(scores["jaccard"]).sum())
        per_image.update(explained_index=explained["index"], **scores)
        chance = chance_scores(cp.data, explained["index"], test, memo, registry, cam_threshold)
        for metric in schema.family("explanation"):
            per_image.update({c: chance[c] for c in metric.chance_columns()[:-1]})
            lift_over = chance[f"{schema.LIFT_OVER}_{metric.name}"]
            per_image[f"lift_{metric.name}"] = metric.lift(scores[metric.name], lift_over)
            out.update({c: metrics.mean_excluding_nan(per_image[c])[0] for c in metric.chance_columns()})
        if cp.explain_val:
            chosen = ("validation", cp.explain_val, cp.explain)  # shared by every cell of these explanations
            if chosen not in memo.loaded:
                val_explained, val = memo("explain", cp.explain_val), artifacts.data(cp.data, "val")
                memo.loaded[chosen] = (validation_threshold(val_explained, val, sweeps.jaccard),
                                       validation_box_thresholds(val_explained, val, sweeps.box))
            (tau, at_tau), (box_taus, at_box_taus) = memo.loaded[chosen]
            out.update(tau_star=tau, jaccard_val_tau=metrics.mean_excluding_nan(at_tau)[0])
            per_image["jaccard_val_tau"] = at_tau
            out.update(zip(schema.BOX_TAU_COLUMNS, box_taus.tolist()))
            out["max_box_acc_val_tau"] = metrics.mean_excluding_nan(at_box_taus)[0]
            per_image["max_box_acc_val_tau"] = at_box_taus
    if cp.faithfulness:
        found = memo("faithfulness", cp.faithfulness)
        out["faithfulness_n"] = int(len(found["index"]))
        for metric in schema.family("faithfulness"):
            # lift: the improvement over the random map's, in the metric's better direction
            per_image.update({c: found[c] for c in [metric.name, *metric.chance_columns()[:-1]]})
            lift_over = found[f"{schema.LIFT_OVER}_{metric.name}"]
            per_image[f"lift_{metric.name}"] = metric.lift(found[metric.name], lift_over)
            for column in [metric.name, *metric.chance_columns()]:
                out[column] = metrics.mean_excluding_nan(per_image[column])[0]
    if cp.sanity:
        found = memo("sanity", cp.sanity)
        out["sanity_n"] = int(np.isfinite(found["sanity_spearman"]).sum())
        for name in schema.names("sanity"):
            per_image[name] = found[name]
            out[name] = metrics.mean_excluding_nan(found[name])[0]
    if cp.segment:
        index = memo("explain", cp.explain)["index"]
        segmented = memo("segment", cp.segment)
        masks = segmentations(segmented, cp.segment_index)  # this cell's seeder
        chunks = [metrics.segmentation_per_image(masks[start:start + CHUNK], test["references"][index[start:start + CHUNK]])
                  for start in range(0, len(index), CHUNK)]
        scores = _concatenate(chunks, schema.names("segmentation"))
        out.update(metrics.summary(scores))
        out["seg_n"] = int(np.isfinite(scores["seg_iou"]).sum())
        per_image.update(scores)
    undeclared = schema.undeclared(out)
    if undeclared:  # a metric computed here that leaderboard.csv has no column for
        raise KeyError(f"scoring produced {', '.join(undeclared)}, which xaibench.pipeline.schema does not declare")
    return out, per_image


def _concatenate(chunks: list[dict], names) -> dict[str, np.ndarray]:
    return {name: np.concatenate([c[name] for c in chunks]) if chunks else np.zeros(0) for name in names}


def explanation_scores(explained: dict, references, cam_threshold: float) -> tuple[dict, dict, metrics.Sweeps]:
    """``(per-image scores, means, sweeps)`` of every explanation metric for an explain artifact, chunk by
    chunk (``references``: the split's reference rows; ``sweeps``: ``metrics.Sweeps`` of its images)."""
    index = explained["index"]
    chunks = ((maps, references[index[rows]]) for rows, maps in map_chunks(explained))
    scores, sweeps = metrics.explanation_set(chunks, threshold=cam_threshold)
    return scores, metrics.explanation_summary(scores, sweeps.jaccard), sweeps


def validation_threshold(val_explained: dict, val: dict, test_sweep: np.ndarray) -> tuple[float, np.ndarray]:
    """``(τ*, test Jaccard at τ* per image)``: τ* is the threshold of ``metrics.DEFAULT_SWEEP`` with the
    highest mean Jaccard over the val images (ties to the lower threshold); only val maps and val masks
    are read. NaN (and a NaN array) where the val split has no image with a non-empty mask."""
    index = val_explained["index"]
    curves = [metrics.sweep_per_image(maps, val["references"][index[rows]]) for rows, maps in map_chunks(val_explained)]
    curve, _, _, _ = metrics.sweep_summary(np.concatenate(curves) if curves else
                                           np.zeros((0, len(metrics.DEFAULT_SWEEP))))
    if not len(curve) or not np.isfinite(curve).any():
        return float("nan"), np.full(len(test_sweep), np.nan)
    best = int(np.nanargmax(curve))
    return float(metrics.DEFAULT_SWEEP[best]), test_sweep[:, best]


def validation_box_thresholds(val_explained: dict, val: dict, test_box_sweep: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``(τ per IoU level, test MaxBoxAccV2 per image at them)``: for each level δ of ``metrics.BOX_IOU_LEVELS``
    the threshold of ``metrics.DEFAULT_SWEEP`` with the highest BoxAcc over the val images (ties to the
    lower threshold; only val maps and val masks are read), and ``metrics.box_accuracy`` of the test images
    (``test_box_sweep``: ``metrics.box_iou_sweep``) at them. NaN (and a NaN array) where the val split has
    no image with a non-empty mask."""
    index = val_explained["index"]
    sweeps = [metrics.box_iou_sweep(maps, val["references"][index[rows]]) for rows, maps in map_chunks(val_explained)]
    chosen = metrics.box_thresholds(np.concatenate(sweeps) if sweeps else np.zeros((0, len(metrics.DEFAULT_SWEEP))))
    taus = np.where(chosen >= 0, metrics.DEFAULT_SWEEP[np.maximum(chosen, 0)], np.nan)
    return taus, metrics.box_accuracy(test_box_sweep, chosen)


def chance_scores(data: str, index: np.ndarray, test: dict, memo: Memo, registry, cam_threshold: float) -> dict:
    """Per-image scores of the ``random`` and ``centre`` explainers (``schema.CHANCE_EXPLAINERS``) on the test images
    ``index``: ``{"random_<metric>", "centre_<metric>"}``, worked out once per data set and images."""
    key = ("chance", data, index.tobytes())
    if key not in memo.loaded:
        found: dict[str, list] = {}
        for name in schema.CHANCE_EXPLAINERS:
            explainer = registry.create("explainers", name)
            merged, _ = metrics.explanation_set(_model_free_maps(explainer, test, index), threshold=cam_threshold)
            found.update({f"{name}_{metric}": merged[metric] for metric in schema.names("explanation")})
        memo.loaded[key] = found
    return memo.loaded[key]


def _model_free_maps(explainer, test: dict, index: np.ndarray):
    """``(float32 maps, masks)`` of a model-free explainer on the test images ``index``, ``CHUNK`` at a time."""
    for start in range(0, len(index), CHUNK):
        rows = index[start:start + CHUNK]
        maps = explainer.explain(None, to_tensor(test["images"][rows]), None, target_layers=[])
        yield np.asarray(maps, dtype=np.float32), test["references"][rows]


def score_cells(plan: Plan, store: Store, artifacts: Artifacts, registry, failed: dict[str, Failure],
                cam_threshold: float, warn=None) -> list[CellRow]:
    """Every cell's row; a cell whose score key is unchanged and whose per-image file is the one written
    keeps its earlier scores, and per-image scores are written (and their digest recorded) for each newly
    scored cell. A cell one of whose stages failed is failed with that stage's failure. ``warn(line)``
    is told about a per-image file that cannot be reused."""
    memo = Memo(artifacts)
    rows = []
    scored = store.scored_cells()
    for cp in plan.cells:
        cell_id = cp.cell.cell_id
        broken = [failed[k] for k in cp.keys if k in failed]
        if broken:
            rows.append(CellRow(cell_id, cp.labels, Status.FAILED, {}, broken[0].line()))
            continue
        key = score_key(cp, cam_threshold)
        previous = scored.get(cell_id)
        path = store.cell_path(cell_id)
        relative = str(path.relative_to(store.root))
        if previous and previous.get("score_key") == key:
            problem = store.verify(relative)
            if problem is None:
                rows.append(CellRow(cell_id, cp.labels, Status.DONE, previous))
                continue
            if warn is not None:
                warn(f"{path} cannot be reused: {problem}; scoring the cell again")
        try:
            scores, per_image = score_cell(cp, artifacts, memo, registry, cam_threshold)
            save_arrays(path, **per_image)
            store.record_artifacts("", {relative: file_digest(path)})
            rows.append(CellRow(cell_id, cp.labels, Status.DONE, {**scores, "score_key": key}))
        except Exception as exc:  # a scoring bug fails the cell, not the run
            rows.append(CellRow(cell_id, cp.labels, Status.FAILED, {}, f"scoring: {type(exc).__name__}: {exc}"))
    return rows


# -- the annotation loop -----------------------------------------------------------------------------------


def round_scores(rp: RoundPlan, artifacts: Artifacts, registry, cam_threshold: float, failed=()) -> dict:
    """One round's measurements of one chain. Measurements whose stage is in ``failed`` (the round's
    segmentation or acceptance) are NaN."""
    test, train = artifacts.data(rp.data, "test"), artifacts.data(rp.data, "train")
    raw = artifacts.load("logits", rp.raw_logits)["test"]
    masked = artifacts.load("logits", rp.masked_logits)["test"]
    logits = mixed_logits(rp.chain.cell.ensemble, registry, raw, masked)
    explained = artifacts.load("explain", rp.explain_test)
    truth = test["references"]  # read chunk by chunk with the maps: a split's maps are never all in memory
    jaccard = np.concatenate([metrics.iou(metrics.binarise(maps, cam_threshold), truth[explained["index"][rows]])
                              for rows, maps in map_chunks(explained)] or [np.zeros(0)])
    index = np.flatnonzero(train["has_mask"])  # the explained, segmented and renewed training images
    references = train["references"][index]
    current = artifacts.annotations(rp.data, rp.annotations)[index]
    out = {
        "accuracy": metrics.accuracy(logits, test["labels"]),
        "jaccard": metrics.mean_excluding_nan(jaccard)[0],
        "annotation_iou": metrics.mean_excluding_nan(metrics.iou(current, references))[0],
        "proposal_iou": float("nan"), "accepted": float("nan"), "changed": float("nan"),
        "n_annotated": int(len(index)),
        "n_test": int(len(test["labels"])),
        "reference": "exact" if bool(train["has_reference"].any()) else "original annotations",
    }
    if rp.segment not in failed and rp.explain_train not in failed and len(index):
        proposals = segmentations(artifacts.load("segment", rp.segment), 0)
        out["proposal_iou"] = metrics.mean_excluding_nan(metrics.iou(proposals[:], references))[0]
    if rp.accept not in failed and len(index):
        accepted = artifacts.load("accept", rp.accept)
        out.update(accepted=float(accepted["accepted"].mean()), changed=float(accepted["changed"].mean()))
    return out


def round_row(rp: RoundPlan, failed: dict[str, Failure], artifacts: Artifacts, registry, *, cam_threshold: float,
              min_changed: float) -> RoundRow:
    """One chain's row of one round: its labels, measurements and status: done; converged when the round
    changed no annotation; stopped when it changed at most ``min_changed`` of them; failed with the error
    (with the model's measurements where only the round's annotation stages failed)."""
    broken = [failed[k] for k in rp.model_keys if k in failed]
    if broken:
        return RoundRow(rp.labels, rp.round, Status.FAILED, error=broken[0].line())
    try:
        scores = round_scores(rp, artifacts, registry, cam_threshold, failed)
    except Exception as exc:  # a scoring bug fails the chain, not the loop
        return RoundRow(rp.labels, rp.round, Status.FAILED, error=f"scoring: {type(exc).__name__}: {exc}")
    broken = [failed[k] for k in rp.annotation_keys if k in failed]
    if broken:
        return RoundRow(rp.labels, rp.round, Status.FAILED, scores, error=broken[0].line())
    status = Status.CONVERGED if scores["changed"] == 0 else \
        Status.STOPPED if scores["changed"] <= min_changed else Status.DONE
    return RoundRow(rp.labels, rp.round, status, scores)
