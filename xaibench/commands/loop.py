"""The annotation loop (``xaibench loop``): explanations → segmentations → better annotations → retrain,
measured round by round.

A chain is one grid cell that has a mask, an explainer, a seeder and a segmenter, with one acceptance rule
(``loop.acceptors``) and one seed. Its round 0 trains on the dataset's own training annotations ``A_0``.
Round ``r``:

1. fine-tunes the baseline on training images masked with ``A_r`` (the masked model ``M_r``);
2. scores ``M_r`` through the grid's ensemble on the raw test images: accuracy, and the Jaccard of its
   explanations to the test references;
3. explains ``M_r`` on every annotated training image, seeds prompts from those maps and segments them;
4. lets the acceptance rule decide, image by image, whether the segmentation replaces the annotation,
   giving ``A_{r+1}``; the round's row reports the IoU of ``A_r`` to the references and the shares of
   images whose proposal was accepted and whose annotation changed.

A chain stops after ``loop.rounds`` renewals, or early: "converged" once a round changes no annotation (the
next round would train on the same annotations again, so summaries carry its values forward), or
"stopped" once a round changes at most ``loop.min_changed`` of them (not carried forward). Every step is a cached,
content-keyed stage (round 0 shares its stages with ``xaibench run`` on the same grid), so running the
same command again resumes where it stopped and raising ``rounds`` only runs the new rounds.

The references are the datasets' exact masks where annotations are knowingly imprecise (the synthetic
dataset's ``annotation_noise``); elsewhere they are the original annotations themselves, so annotation
IoU then measures how far the loop moves away from the annotator, not towards the truth.

The planning of rounds is ``plan.LoopPlanner``, their scoring ``scoring.round_row``, the tables
``loop_tables``; this module strings them together round by round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from xaibench import machine
from xaibench.commands.outputs import Outputs
from xaibench.kit.files import atomic_write_text
from xaibench.kit.registry import get_registry
from xaibench.pipeline import exhibits
from xaibench.pipeline.engine import RunFolder, apply_executor_override, execute
from xaibench.pipeline.plan import Chain, LoopPlanner, not_fetched_lines, plan_loop
from xaibench.pipeline.records import Failure, RoundRow, RunCounts, Status, failure_table
from xaibench.pipeline.scoring import round_row
from xaibench.presentation import figures, report
from xaibench.presentation.loop_tables import METRICS, summarise, varying_labels


def describe(planner: LoopPlanner, *, verbose: bool = False) -> str:
    """The loop's dry run: chains, rounds and trainings, and with ``verbose`` one line per chain."""
    grid = planner.grid
    lines = [f"grid {grid.name!r}: {len(planner.chains):,} chain(s), up to {grid.loop.rounds} round(s) after round 0, "
             f"at most {len(planner.chains) * (grid.loop.rounds + 1):,} masked trainings"]
    if verbose:
        for chain in planner.chains:
            lines.append("  " + " | ".join(f"{k}={v}" for k, v in planner.labels(chain).items() if v != ""))
    else:
        lines.append("  (--verbose lists every chain)")
    lines += not_fetched_lines(planner.not_fetched)
    return "\n".join(lines)


def _write_tables(out_dir: Path, rows: list[RoundRow], rounds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    seeds = pd.DataFrame([row.as_dict() for row in rows])
    summary = summarise(seeds, rounds) if len(seeds) else pd.DataFrame()
    atomic_write_text(out_dir / "loop_seeds.csv", seeds.to_csv(index=False))
    atomic_write_text(out_dir / "loop.csv", summary.to_csv(index=False))
    return seeds, summary


def loop(grid_path, out_dir, *, retry_failed: bool = False, executor_override: dict | None = None,
         registry=None, progress: bool = True, rebuild_store: bool = False) -> dict:
    """Run the annotation loop of a grid into ``out_dir``; returns the summary (also in ``loop.json``).

    Writes ``loop.csv`` (per configuration and round, over seeds), ``loop_seeds.csv`` (per chain and
    round), ``loop_report.html`` and ``figures/loop_*.png``; the tables are rewritten after every round.
    ``out_dir`` may be the folder of ``xaibench run`` on the same grid: the two share the cache (round 0
    reuses the run's models) and write different files."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    registry = registry or get_registry()
    planner = plan_loop(grid_path, registry)
    grid = planner.grid
    apply_executor_override(grid, executor_override, registry)
    rounds, rows, plans = grid.loop.rounds, [], {}
    counts = RunCounts()
    with RunFolder(out_dir, grid_path, grid, registry, progress=progress, rebuild_store=rebuild_store) as folder:
        annotations: dict[Chain, str | None] = {chain: None for chain in planner.chains}
        executed: set[str] = set()
        failed: dict[str, Failure] = {}
        failures: list[Failure] = []
        seeds_table, summary = pd.DataFrame(), pd.DataFrame()
        for round_ in range(rounds + 1):
            if not annotations:
                break
            round_plans = [planner.round(chain, round_, a) for chain, a in annotations.items()]
            new = {k: s for k, s in planner.builder.stages.items() if k not in executed}
            if progress:
                tqdm.write(f"round {round_}: {len(round_plans)} chain(s), {len(new)} stage(s)")
            execution = execute(new, folder, retry_failed=retry_failed, failed=failed)
            executed |= set(new)
            failed.update(execution.failed)
            counts.add(execution.counts)
            for rp in round_plans:
                row = round_row(rp, failed, folder.artifacts, registry, cam_threshold=grid.protocol.cam_threshold,
                                min_changed=grid.loop.min_changed)
                rows.append(row)
                if row.status == Status.FAILED:
                    failures.append(next((failed[k] for k in [*rp.model_keys, *rp.annotation_keys] if k in failed),
                                         None) or Failure("scoring", "", row.error))
                if row.status != Status.FAILED:
                    plans.setdefault(rp.chain, []).append(rp)
                if round_ == rounds or row.status != Status.DONE:
                    annotations.pop(rp.chain)
                else:
                    annotations[rp.chain] = rp.accept
            seeds_table, summary = _write_tables(folder.out, rows, rounds)
        info = {
            "grid": grid.name, "chains": len(planner.chains), "rounds": rounds,
            "chains_failed": sum(r.status == Status.FAILED for r in rows),
            "chains_converged": sum(r.status == Status.CONVERGED and r.round < rounds for r in rows),
            "chains_stopped": sum(r.status == Status.STOPPED and r.round < rounds for r in rows),
            **counts.as_dict(), "device": folder.runner.device,
            "failures": failure_table(failures),
        }
        return publish(folder, plans, summary, seeds_table, info, started=started)


def publish(folder: RunFolder, plans: dict, summary: pd.DataFrame, seeds_table: pd.DataFrame, info: dict, *,
            started: float) -> dict:
    """The loop's figures, report and ``loop.json``; a figure or the report that fails is recorded and the
    rest is still written."""
    out = folder.out
    outputs = Outputs()
    series = outputs.attempt("loop annotation figures", lambda: exhibits.annotation_series(plans, folder.artifacts),
                             default=[])
    varying = varying_labels(summary) if len(summary) else []
    drawn: list[Path] = []
    for name, draw in figures.loop_figures(out, summary, varying, METRICS, series):
        drawn += outputs.attempt(f"figures/{name}", draw, default=[])
    figures.remove_stale((out / "figures").glob("loop_*.png"), drawn)
    info.update({"wall_s": round(time.perf_counter() - started, 3), **machine.describe(),
                 "figures": [str(p.relative_to(out)) for p in drawn], "report": "loop_report.html",
                 "presentation_errors": outputs.summary()})
    outputs.attempt("loop_report.html", lambda: atomic_write_text(out / "loop_report.html", report.loop_page(
        f"xaibench annotation loop: {folder.grid.name}", summary, seeds_table, figures=drawn, run_info=info,
        grid_text=(out / "grid.yaml").read_text())))
    info["presentation_errors"] = outputs.problems
    atomic_write_text(out / "loop.json", json.dumps(info, indent=2))
    return info
