"""Runs a grid: plan the stages, execute the missing ones, score every cell, write the results.

Resuming is the default: a stage whose record says done and whose artifact exists is reused, so running
the same command again after a crash or with an extended grid only computes what is new.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import leaderboard, metrics, report
from .figures import accuracy_vs_alpha, write_run_figures
from .grid import digest, expand, load_grid
from .registry import get_registry
from .plan import TRAINING_KINDS, Plan, build_plan
from .stages import StageRunner, unpack_masks
from .store import Store, atomic_write_text, load_arrays, save_arrays


def plan_grid(grid_path, registry=None):
    """Load and validate a grid and plan its stages; raises ``UserError`` and writes nothing."""
    registry = registry or get_registry()
    grid = load_grid(grid_path, registry)
    cells = expand(grid)
    plan = build_plan(grid, cells, registry)
    registry.validate("executors", grid.executor.name, grid.executor.params)
    from .training import resolve_device

    resolve_device(grid.device, what=f"{grid_path}: device")  # before anything is written
    return grid, plan


def describe_plan(grid, plan: Plan) -> str:
    lines = [f"grid {grid.name!r}: {len(plan.cells)} cells, {len(plan.stages)} stages, "
             f"{plan.count(*TRAINING_KINDS)} trainings "
             f"({plan.count('train')} baseline, {plan.count('finetune')} masked fine-tunes)"]
    for cp in plan.cells:
        labels = cp.cell.labels()
        lines.append("  " + " | ".join(f"{k}={v}" for k, v in labels.items() if v != ""))
    return "\n".join(lines)


def _depths(plan: Plan) -> dict[str, int]:
    depth: dict[str, int] = {}
    for key, stage in plan.stages.items():  # insertion order is a topological order
        depth[key] = 1 + max((depth.get(d, -1) for d in stage.deps), default=-1)  # absent: done earlier
    return depth


def execute(plan: Plan, store: Store, runner: StageRunner, executor, *, progress=True,
            retry_failed: bool = False) -> dict:
    """Run every stage not already done; record results in the store. Returns counters.

    A stage that failed in an earlier run stays failed (its cells are reported as failed again) unless
    ``retry_failed``; stages that depend on it are skipped either way."""
    from tqdm.auto import tqdm

    counts = {"stages_run": 0, "stages_reused": 0, "stages_failed": 0, "trainings_run": 0, "trainings_reused": 0}
    failed: dict[str, str] = {}
    depth = _depths(plan)
    waves: dict[int, list] = {}
    for key, stage in plan.stages.items():
        waves.setdefault(depth[key], []).append(stage)
    todo = []
    for stage in plan.stages.values():
        record = store.stage(stage.key)
        if record and record["status"] == "done" and runner.artifact_exists(stage):
            counts["stages_reused"] += 1
            counts["trainings_reused"] += stage.kind in TRAINING_KINDS
        elif record and record["status"] == "failed" and not retry_failed:
            failed[stage.key] = f"{stage.label}: {record['meta'].get('message', 'failed')} (earlier run; --retry-failed reruns it)"
            counts["stages_failed"] += 1
        else:
            todo.append(stage.key)
    pending = set(todo)
    with tqdm(total=len(todo), desc="stages", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        for level in sorted(waves):
            ready = []
            for stage in waves[level]:
                if stage.key not in pending:
                    continue
                broken = [d for d in stage.deps if d in failed]
                if broken:
                    failed[stage.key] = f"skipped: upstream stage failed ({failed[broken[0]]})"
                    counts["stages_failed"] += 1
                    bar.update(1)
                    continue
                ready.append(stage)
            for stage, result in zip(ready, executor.map(runner, ready)):
                bar.update(1)
                if result["ok"]:
                    store.record_stage(stage.key, stage.kind, stage.label, "done", meta=result["meta"],
                                       seconds=result["seconds"])
                    counts["stages_run"] += 1
                    counts["trainings_run"] += stage.kind in TRAINING_KINDS
                else:
                    store.record_stage(stage.key, stage.kind, stage.label, "failed", error=result["traceback"],
                                       meta={"message": result["error"]}, seconds=result["seconds"])
                    failed[stage.key] = f"{stage.label}: {result['error']}"
                    counts["stages_failed"] += 1
                    tqdm.write(f"stage failed: {stage.label}: {result['error']}", file=sys.stderr)
    counts["failed"] = failed
    return counts


class _Arrays:
    """Loads each cached artifact once while cells are scored."""

    def __init__(self, runner: StageRunner):
        self.runner = runner
        self.loaded: dict[tuple, dict] = {}

    def __call__(self, kind: str, key: str) -> dict:
        if (kind, key) not in self.loaded:
            self.loaded[(kind, key)] = load_arrays(self.runner.path(kind, key))
        return self.loaded[(kind, key)]


def mixed_logits(ensemble, registry, raw: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
    """The logits (N, C) a cell is scored on: the raw model's, or the ``ensemble`` choice's mix of both."""
    if ensemble is None:
        return raw
    import torch

    rule = registry.create("ensembles", ensemble.name, **ensemble.params)
    return rule(torch.from_numpy(raw), torch.from_numpy(masked)).numpy()


def copy_grid(grid_path, out_dir: Path) -> None:
    """Keep the grid beside its results (unless it is that copy, rerun from the results folder)."""
    target = Path(out_dir) / "grid.yaml"
    if not (target.exists() and target.resolve() == Path(grid_path).resolve()):
        shutil.copyfile(grid_path, target)


def checked_executor(grid, registry):
    """The grid's executor, built and ``check()``-ed (an unreachable cluster fails before anything runs)."""
    executor = registry.create("executors", grid.executor.name, **grid.executor.params)
    if hasattr(executor, "check"):
        executor.check()
    return executor


def apply_executor_override(grid, override: dict | None, registry) -> None:
    """Replace the grid's executor by one named on the command line (executors never change results)."""
    if override is None:
        return
    from .grid import ComponentSpec

    grid.executor = ComponentSpec.model_validate({"name": override["name"], **override.get("params", {})})
    registry.validate("executors", grid.executor.name, grid.executor.params)


# Bump when scoring changes, so cells scored by an older xaibench are scored again.
SCORING_VERSION = 1


def score_key(cp, cam_threshold: float) -> str:
    """What a cell's scores depend on: its stages, its seeder's slot, its ensemble rule, the threshold."""
    ensemble = cp.cell.ensemble.ident if cp.cell.ensemble else None
    return digest([SCORING_VERSION, cp.keys, cp.segment_index, ensemble, cam_threshold])


def score_cell(cp, runner: StageRunner, arrays: _Arrays, registry, cam_threshold: float) -> tuple[dict, dict]:
    """The metrics of one cell from cached artifacts (cheap: no model is run).

    Returns ``(means, per_image)``: the mean scores, and the per-image arrays they come from (test ids,
    correctness, per-image Jaccard and segmentation IoU) that confidence intervals and paired tests need."""
    test = runner.data(cp.data, "test")
    labels = test["labels"]
    masked = arrays("logits", cp.masked_logits)["test"] if cp.cell.ensemble is not None else None
    logits = mixed_logits(cp.cell.ensemble, registry, arrays("logits", cp.raw_logits)["test"], masked)
    correct = np.argmax(logits, axis=1) == labels
    out = {"accuracy": metrics.accuracy(logits, labels), "n_test": int(len(labels))}
    per_image = {"ids": test["ids"], "correct": correct}
    if cp.explain:
        explained = arrays("explain", cp.explain)
        truth = test["references"][explained["index"]]
        if ("explanation scores", cp.explain) not in arrays.loaded:  # shared by every cell of this explanation
            maps = explained["maps"].astype(np.float32)
            arrays.loaded[("explanation scores", cp.explain)] = (
                metrics.explanation_per_image(maps, truth, threshold=cam_threshold),
                metrics.explanation_scores(maps, truth, threshold=cam_threshold))
        scores, means = arrays.loaded[("explanation scores", cp.explain)]
        out.update(means)
        out["jaccard_n"] = int(np.isfinite(scores["jaccard"]).sum())
        per_image.update(explained_index=explained["index"], **scores)
    if cp.segment:
        segmented = arrays("segment", cp.segment)
        masks = unpack_masks(segmented, cp.segment_index)
        truth = test["references"][arrays("explain", cp.explain)["index"]]
        scores = metrics.segmentation_per_image(masks, truth)
        out.update(metrics.segmentation_scores(masks, truth))
        out["seg_n"] = int(np.isfinite(scores["seg_iou"]).sum())
        per_image.update(scores)
    return out, per_image


def _score_cells(plan, store, runner, arrays, registry, failed: dict, cam_threshold: float) -> list[tuple]:
    """Store rows ``(cell_id, labels, status, metrics, error)`` of every cell; a cell whose score key is
    unchanged keeps its earlier scores, and per-image scores are written for each newly scored cell."""
    rows = []
    scored = store.scored_cells()
    for cp in plan.cells:
        broken = [failed[k] for k in cp.keys if k in failed]
        if broken:
            rows.append((cp.cell.cell_id, cp.cell.labels(), "failed", {}, broken[0]))
            continue
        key = score_key(cp, cam_threshold)
        previous = scored.get(cp.cell.cell_id)
        if previous and previous.get("score_key") == key and store.cell_path(cp.cell.cell_id).is_file():
            rows.append((cp.cell.cell_id, cp.cell.labels(), "done", previous, None))
            continue
        try:
            scores, per_image = score_cell(cp, runner, arrays, registry, cam_threshold)
            save_arrays(store.cell_path(cp.cell.cell_id), **per_image)
            rows.append((cp.cell.cell_id, cp.cell.labels(), "done", {**scores, "score_key": key}, None))
        except Exception as exc:  # a scoring bug fails the cell, not the run
            rows.append((cp.cell.cell_id, cp.cell.labels(), "failed", {}, f"scoring: {type(exc).__name__}: {exc}"))
    return rows


def _figures(plan, runner, arrays, registry, out_dir: Path, *, key: str) -> list[Path]:
    """The run's figures, redrawn only when a cell's inputs changed (``figures/index.json`` holds the key)."""
    index = out_dir / "figures" / "index.json"
    paths = []
    if index.is_file():
        recorded = json.loads(index.read_text())
        paths = [out_dir / p for p in recorded["files"]]
        if recorded["key"] == key and all(p.is_file() for p in paths):
            return paths
    figures = write_run_figures(plan, runner, arrays, registry, out_dir)
    figures += accuracy_vs_alpha(plan, runner, arrays, registry, out_dir)
    for stale in set(paths) - set(figures):  # drawn for an earlier grid; other commands' figures stay
        stale.unlink(missing_ok=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index, json.dumps({"key": key, "files": [str(p.relative_to(out_dir)) for p in figures]}))
    return figures


def run(grid_path, out_dir, *, dry_run: bool = False, retry_failed: bool = False,
        executor_override: dict | None = None, registry=None, progress: bool = True, echo=print) -> dict:
    """Run a grid into ``out_dir``; returns the run summary (also written to ``out_dir/run.json``).

    Every user error (bad grid, unknown component, missing files) is raised before anything is written."""
    started = time.perf_counter()
    registry = registry or get_registry()
    grid, plan = plan_grid(grid_path, registry)
    apply_executor_override(grid, executor_override, registry)
    if dry_run:
        echo(describe_plan(grid, plan))
        return {"cells": len(plan.cells), "trainings": plan.count(*TRAINING_KINDS), "dry_run": True}
    executor = checked_executor(grid, registry)
    out_dir = Path(out_dir)
    store = Store(out_dir)
    try:
        store.lock()
        copy_grid(grid_path, out_dir)
        runner = StageRunner(store.cache, registry, device=grid.device, progress=progress)
        try:
            counts = execute(plan, store, runner, executor, progress=progress, retry_failed=retry_failed)
        finally:
            executor.close()
        failed = counts.pop("failed")
        arrays = _Arrays(runner)
        rows = _score_cells(plan, store, runner, arrays, registry, failed, grid.protocol.cam_threshold)
        store.record_cells(rows)
        current = {cp.cell.cell_id for cp in plan.cells}
        df = leaderboard.frame([c for c in store.cells() if c["cell_id"] in current])
        summary_table = leaderboard.summarise(df, {cid: store.cell_path(cid) for cid in df["cell_id"]})
        published = None
        if grid.published:
            shutil.copyfile(grid.published, out_dir / "published.csv")
            published = leaderboard.read_published(out_dir / "published.csv")
        figures = _figures(plan, runner, arrays, registry, out_dir,
                           key=digest(sorted(score_key(cp, grid.protocol.cam_threshold) for cp in plan.cells)))
        title = f"xaibench leaderboard: {grid.name}"
        tables = leaderboard.write(out_dir, df, summary_table, title=title, published=published)
        import torch

        summary = {
            "grid": grid.name,
            "cells": len(plan.cells),
            "cells_done": sum(1 for r in rows if r[2] == "done"),
            "cells_failed": sum(1 for r in rows if r[2] == "failed"),
            **counts,
            "wall_s": round(time.perf_counter() - started, 3),
            "device": runner.device,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "plugins": registry.describe(),
            "leaderboard": [p.name for p in tables],
            "figures": [str(p.relative_to(out_dir)) for p in figures],
            "report": "report.html",
        }
        report_html = report.page(title, df, summary_table, published=published, figures=figures,
                                  run_info=summary, grid_text=Path(grid_path).read_text())
        atomic_write_text(out_dir / "report.html", report_html)
        atomic_write_text(out_dir / "run.json", json.dumps(summary, indent=2))
        return summary
    finally:
        store.close()
