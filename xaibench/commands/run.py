"""``xaibench run``: plan a grid, execute its stages, score every cell, then write tables, figures, report.

Resuming is the default: a stage whose record says done and whose artifact exists is reused, so running
the same command again after a crash or with an extended grid only computes what is new. Whatever
happens in the tables, figures or report, ``run.json`` and the leaderboard are written: a bug in drawing
never costs the computed results.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from xaibench import machine
from xaibench.commands.outputs import Outputs
from xaibench.kit.files import atomic_write_text
from xaibench.kit.registry import get_registry
from xaibench.pipeline import calibration, exhibits, results
from xaibench.pipeline.engine import RunFolder, apply_executor_override, echo_warning, execute
from xaibench.pipeline.estimate import Estimate, estimate_plan, split_sizes
from xaibench.pipeline.grid import Grid, all_choices
from xaibench.pipeline.plan import TRAINING_KINDS, Plan, not_fetched_lines, plan_run
from xaibench.pipeline.records import CellRow, Failure, Status, failure_table
from xaibench.pipeline.scoring import score_cells, scores_key
from xaibench.pipeline.stages import peak_memory, reset_peak_memory
from xaibench.presentation import figures, leaderboard, report
from xaibench.text import MISSING, text_table


def plan_grid(grid_path, registry=None, *, keep_cells: bool = True, fetch: bool = True):
    """Load and validate a grid and plan its stages; raises ``UserError`` and writes nothing (``fetch=False``:
    downloads nothing either). Imports no torch: the device is checked against the machine when the run
    starts."""
    registry = registry or get_registry()
    grid, plan = plan_run(grid_path, registry, keep_cells=keep_cells, fetch=fetch)
    registry.validate("executors", grid.executor.name, grid.executor.params)
    return grid, plan


AXES = ("datasets", "backbones", "masks", "ensembles", "explainers", "seeders", "segmenters")


def describe_plan(grid, plan: Plan, *, verbose: bool = False) -> str:
    """The dry run's summary: cells, stages and trainings; the choices on each axis; the stages of each
    kind; and, with ``verbose``, one line per cell."""
    lines = [f"grid {grid.name!r}: {plan.n_cells:,} cells, {len(plan.stages):,} stages, "
             f"{plan.count(*TRAINING_KINDS):,} trainings "
             f"({plan.count('train'):,} baseline, {plan.count('finetune'):,} masked fine-tunes)"]
    axes = [f"seeds {len(grid.seeds)}"] + [f"{axis} {len(all_choices(getattr(grid, axis)))}" for axis in AXES
                                           if getattr(grid, axis)]
    lines.append("  axes: " + ", ".join(axes))
    kinds = dict.fromkeys(s.kind for s in plan.stages.values())
    lines.append("  stages: " + ", ".join(f"{kind} {plan.count(kind):,}" for kind in kinds))
    if verbose:
        for cp in plan.cells:
            lines.append("  " + " | ".join(f"{k}={v}" for k, v in cp.labels.items() if v != ""))
    else:
        lines.append("  (--verbose lists every cell)")
    lines += not_fetched_lines(plan.not_fetched)
    return "\n".join(lines)


def estimate_dry_run(grid: Grid, plan: Plan, registry) -> tuple[Estimate, calibration.Calibration]:
    """The plan's cost by stage kind and, where it can be timed here, the rates that turn it into seconds."""
    estimate = estimate_plan(plan, registry)
    request = calibration.request_for(grid, registry, faithfulness_planned=plan.count("faithfulness") > 0)
    timed = calibration.calibrate(request) if isinstance(request, calibration.Request) else \
        calibration.Calibration(None, request)
    return estimate, timed


# Above this share of the estimated cost, the dry run says how to make faithfulness cheaper.
FAITHFULNESS_HINT_SHARE = 0.5


def describe_estimate(estimate: Estimate, timed: calibration.Calibration, grid: Grid, registry) -> list[str]:
    """The dry run's cost table: per stage kind its stages, forward-pass equivalents, other work, estimated
    seconds and share of the total, most costly first; the notes on what was not counted; and a hint when
    faithfulness is most of the cost."""
    rates = timed.rates
    passes = [k for k in estimate.kinds if k.work.passes or k.work.solves]
    calls = [k for k in estimate.kinds if not (k.work.passes or k.work.solves)]

    def cost(kind):
        return kind.seconds(rates) if rates is not None else kind.work.passes

    passes.sort(key=lambda k: cost(k) or 0, reverse=True)
    total = sum(cost(k) or 0 for k in passes)
    share = {k.kind: (cost(k) or 0) / total for k in passes} if total else {}
    rows = []
    for k in passes + calls:
        count = f"{k.work.passes:,}" if k.work.passes or not k.unknown else ""
        if k.unknown:
            count += f"{' + ' if count else ''}{k.unknown} unknown"
        other = f"{k.work.solves:,} ROAD solves" if k.work.solves else (
            f"{k.work.calls:,} {k.call_unit}" if k.work.calls else "")
        seconds = k.seconds(rates)
        rows.append([k.kind, f"{k.stages:,}", count or "0", other, MISSING if seconds is None else f"{seconds:,.0f}",
                     f"{share[k.kind]:.0%}" if k.kind in share else MISSING])
    if rates is not None:
        solve = f", 1 ROAD solve = {rates.solve_s * 1000:.1f} ms" if rates.solve_s is not None else ""
        head = (f"estimated cost (an estimate from stage counts, not a measurement): ~{total:,.0f} s{_longer(total)} "
                f"of work on {rates.device} at 1 pass = {rates.pass_s * 1000:.2f} ms{solve} ({rates.timed_on}, "
                f"untrained)")
    else:
        head = (f"estimated cost (an estimate from stage counts, in forward-pass equivalents only, shares of the "
                f"passes; not timed: {timed.problem})")
    table = text_table(["stage", "stages", "passes", "other", "est. s", "share"], rows)
    lines = [head] + ["  " + line for line in table]
    sizes = {split_sizes(d, registry).image_size for d in all_choices(grid.datasets)}
    if rates is not None and (len(all_choices(grid.backbones)) > 1 or len(sizes) > 1):
        lines.append("  note: the grid's other backbones and image sizes are counted at this one's rate")
    if timed.busy:
        lines.append(f"  note: {timed.busy}")
    lines += [f"  note: {note}" for note in estimate.notes]
    protocol = grid.protocol
    if share.get("faithfulness", 0) > FAITHFULNESS_HINT_SHARE:
        lines.append(f"  hint: faithfulness is {share['faithfulness']:.0%} of this estimate; in the grid's protocol, "
                     f"faithfulness_images (now {protocol.faithfulness_images or 'all'}, images per explanation) and "
                     f"faithfulness_steps (now {protocol.faithfulness_steps}) cut it about in proportion, and "
                     f"faithfulness_steps: 0 measures none")
    return lines


def _longer(seconds: float) -> str:
    """`` (~N min)`` or `` (~N.N h)`` for a duration long enough to read better so, else nothing."""
    if seconds >= 3600:
        return f" (~{seconds / 3600:.1f} h)"
    return f" (~{seconds / 60:.0f} min)" if seconds >= 120 else ""


def failure_summary(plan: Plan, rows: list[CellRow], failed: dict[str, Failure]) -> list[dict]:
    """Each distinct failure behind the failed cells (stage, component, message) with how many cells it
    failed, most first."""
    return failure_table(next((failed[k] for k in cp.keys if k in failed), None) or Failure("scoring", "", row.error)
                         for cp, row in zip(plan.cells, rows) if row.status == Status.FAILED)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What ``run`` returns. ``info``: the run's summary, as written to ``run.json`` (a dry run's: cells and
    trainings planned, and the cost estimate). ``cells``, ``summary`` and ``published``: the frames the
    tables were drawn from (None for a dry run), so the command prints its tables without scoring the run a
    second time."""

    info: dict
    cells: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    published: pd.DataFrame | None = None


def run(grid_path, out_dir, *, dry_run: bool = False, retry_failed: bool = False,
        executor_override: dict | None = None, registry=None, progress: bool = True, echo=print,
        rebuild_store: bool = False, verbose: bool = False) -> RunResult:
    """Run a grid into ``out_dir``; returns its ``RunResult`` (its summary is also ``out_dir/run.json``).

    Every user error (bad grid, unknown component, missing files) is raised before anything is written.
    ``dry_run`` plans and prints a summary (every cell with ``verbose``) and the cost estimate
    (``describe_estimate``), and writes nothing; its result's ``info["estimate"]`` holds the estimate's
    numbers (``Estimate.as_dict``, and ``not_timed``: why it has no seconds, or empty)."""
    started = time.perf_counter()
    registry = registry or get_registry()
    grid, plan = plan_grid(grid_path, registry, keep_cells=not dry_run or verbose, fetch=not dry_run)
    apply_executor_override(grid, executor_override, registry)
    if dry_run:
        echo(describe_plan(grid, plan, verbose=verbose))
        estimate, timed = estimate_dry_run(grid, plan, registry)
        echo("\n".join(describe_estimate(estimate, timed, grid, registry)))
        return RunResult({"cells": plan.n_cells, "trainings": plan.count(*TRAINING_KINDS), "dry_run": True,
                          "estimate": {**estimate.as_dict(timed.rates), "not_timed": timed.problem}})
    with RunFolder(out_dir, grid_path, grid, registry, progress=progress, rebuild_store=rebuild_store) as folder:
        # Segment stages last: a seeder whose seeds failed is left out of its group's shared segment stage.
        before = execute({k: s for k, s in plan.stages.items() if s.kind != "segment"}, folder,
                         retry_failed=retry_failed)
        plan.group_segments(before.failed)
        execution = execute({k: s for k, s in plan.stages.items() if s.kind == "segment"}, folder,
                            retry_failed=retry_failed, failed=before.failed)
        execution.counts.add(before.counts)
        execution.failed.update(before.failed)
        reset_peak_memory()
        rows = score_cells(plan, folder.store, folder.artifacts, registry, execution.failed,
                           grid.protocol.cam_threshold, warn=echo_warning)
        folder.store.record_cells(rows, settings=folder.settings())
        current = {cp.cell.cell_id for cp in plan.cells}
        cells = [c for c in folder.store.cells() if c["cell_id"] in current]
        files = {c["cell_id"]: folder.store.cell_path(c["cell_id"]) for c in cells}
        info = {
            "grid": grid.name,
            "cells": len(plan.cells),
            "cells_done": sum(1 for r in rows if r.status == Status.DONE),
            "cells_failed": sum(1 for r in rows if r.status == Status.FAILED),
            **execution.counts.as_dict(),
            "failures": failure_summary(plan, rows, execution.failed),
            "device": folder.runner.device,
            "scoring_peak_rss_mib": peak_memory(),
        }
        return publish(folder, plan, cells, files, info, started=started)


def publish(folder: RunFolder, plan: Plan, cells: list[dict], files: dict, info: dict, *,
            started: float) -> RunResult:
    """Tables, figures, report and ``run.json`` of a finished execution: engine → scoring → tables →
    figures → report, each product on its own, so one that fails is recorded and the rest are written."""
    out, grid = folder.out, folder.grid
    outputs = Outputs()
    df = results.frame(cells)
    summary = outputs.attempt("leaderboard_summary.csv", lambda: results.summarise(df, files),
                              default=pd.DataFrame(columns=results.SUMMARY_COLUMNS))
    published = None
    if grid.published:
        shutil.copyfile(grid.published, out / "published.csv")
        published = outputs.attempt("published.csv", lambda: results.read_published(out / "published.csv"))
    drawn = draw_figures(folder, plan, outputs, key=scores_key(plan, grid.protocol.cam_threshold))
    title = f"xaibench leaderboard: {grid.name}"
    info.update(machine.describe())
    tables = outputs.attempt("leaderboard.md", lambda: leaderboard.write(
        out, df, summary, title=title, published=published, machines=machine.sentence([info])), default=[])
    info.update({
        "wall_s": round(time.perf_counter() - started, 3),
        "plugins": folder.registry.describe(),
        "leaderboard": [p.name for p in tables],
        "figures": [str(p.relative_to(out)) for p in drawn],
        "report": "report.html",
    })
    info["presentation_errors"] = outputs.summary()  # so far, for the report itself
    outputs.attempt("report.html", lambda: atomic_write_text(out / "report.html", report.page(
        title, df, summary, published=published, figures=drawn, run_info=info, grid_text=grid_text(folder))))
    info["presentation_errors"] = outputs.problems
    atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    return RunResult(info, df, summary, published)


def grid_text(folder: RunFolder) -> str:
    return (folder.out / "grid.yaml").read_text()


def draw_figures(folder: RunFolder, plan: Plan, outputs: Outputs, *, key: str) -> list[Path]:
    """The run's figures, redrawn only when a cell's scores changed (``figures/index.json`` holds the key
    they were drawn for). Figures an earlier grid drew that this one does not are deleted; figures other
    commands drew (the loop's) stay."""
    out = folder.out
    index = out / "figures" / "index.json"
    recorded = _read_index(index)
    before = [out / p for p in recorded.get("files", [])]
    if recorded.get("key") == key and before and all(p.is_file() for p in before):
        return before
    artifacts, registry = folder.artifacts, folder.registry
    masks = outputs.attempt("Fig. 1 (masks)", lambda: exhibits.mask_examples(plan, artifacts, registry), default=[])
    overlays = outputs.attempt("Fig. 2 (overlays)", lambda: exhibits.overlays(plan, artifacts), default=[])
    curves = outputs.attempt("accuracy against α", lambda: exhibits.alpha_curves(plan, artifacts, registry))
    drawn: list[Path] = []
    for name, draw in figures.run_figures(out, masks, overlays, curves):
        drawn += outputs.attempt(f"figures/{name}", draw, default=[])
    figures.remove_stale(before, drawn)
    index.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index, json.dumps({"key": key if not outputs.problems else None,
                                         "files": [str(p.relative_to(out)) for p in drawn]}))
    return drawn


def _read_index(path: Path) -> dict:
    """The figure index, or an empty one when it is missing or unreadable (the figures are then redrawn)."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    files = recorded.get("files")
    valid = isinstance(files, list) and all(isinstance(f, str) and not Path(f).is_absolute() and ".." not in
                                            Path(f).parts for f in files)
    return {"key": recorded.get("key"), "files": files if valid else []}
