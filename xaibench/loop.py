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
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, stats
from .errors import GridError
from .grid import Cell, Choice, Grid, all_choices, expand, load_grid
from .plan import Plan, PlanBuilder, check_components
from .registry import get_registry
from .runner import apply_executor_override, checked_executor, copy_grid, execute, mixed_logits
from .stages import StageRunner, unpack_masks
from .store import Store, atomic_write_text, load_arrays

METRICS = {  # column → what it is, as the tables and the report say it
    "accuracy": "test accuracy (raw images)",
    "jaccard": "explanation Jaccard vs test references",
    "annotation_iou": "IoU of the training annotations vs references",
    "proposal_iou": "IoU of the segmentations vs references",
    "accepted": "share of segmentations accepted",
    "changed": "share of annotations changed",
}
CHANGE_METRICS = ("accuracy", "jaccard", "annotation_iou")  # reported as change from round 0 too
LABELS = ("dataset", "backbone", "mask", "ensemble", "alpha", "explainer", "seeder", "segmenter", "acceptor")


@dataclasses.dataclass(frozen=True)
class Chain:
    """One loop: a grid cell with its whole explain → seed → segment chain, an acceptance rule, a seed."""

    cell: Cell
    acceptor: Choice

    def labels(self) -> dict:
        return {**self.cell.labels(), "acceptor": self.acceptor.label}


@dataclasses.dataclass
class RoundPlan:
    """The stage keys of one round of one chain."""

    chain: Chain
    round: int
    data: str
    raw_logits: str
    annotations: str | None  # None: the dataset's own
    masked_logits: str
    explain_test: str
    explain_train: str
    segment: str
    accept: str

    @property
    def model_keys(self) -> list[str]:
        """The stages the round's model and its test measurements come from."""
        return [k for k in (self.data, self.raw_logits, self.annotations, self.masked_logits, self.explain_test) if k]

    @property
    def annotation_keys(self) -> list[str]:
        """The stages that renew the annotations."""
        return [self.explain_train, self.segment, self.accept]


def chains(grid: Grid) -> list[Chain]:
    """Every loop of a grid: each cell with a mask and a segmenter, times each acceptance rule."""
    cells = [c for c in expand(grid) if c.mask is not None and c.segmenter is not None]
    acceptors = dict.fromkeys(all_choices(grid.loop.acceptors))
    return [Chain(cell, acceptor) for cell in cells for acceptor in acceptors]


def load_loop_grid(grid_path, registry) -> tuple[Grid, list[Chain], PlanBuilder]:
    """Validate a grid for the loop; raises ``UserError`` and writes nothing."""
    grid = load_grid(grid_path, registry)
    missing = [s for s in ("masks", "ensembles", "explainers", "seeders", "segmenters") if not getattr(grid, s)]
    if missing:
        raise GridError(f"{grid_path}: the annotation loop needs {', '.join(missing)}: it fine-tunes a masked "
                        "model, explains it, seeds prompts and segments training images (see grids/loop.yaml)")
    found = chains(grid)
    acceptors = {("acceptors", chain.acceptor) for chain in found}
    fingerprints = check_components([chain.cell for chain in found], registry, extra=tuple(acceptors))
    from .training import resolve_device

    resolve_device(grid.device, what=f"{grid_path}: device")
    return grid, found, PlanBuilder(grid, registry, fingerprints)


def plan_round(builder: PlanBuilder, chain: Chain, round_: int, annotations: str | None) -> RoundPlan:
    cell = chain.cell
    data = builder.data(cell.dataset)
    raw = builder.train(cell, data)
    raw_logits = builder.logits(cell, raw, data, "baseline")
    masked = builder.finetune(cell, raw, data, annotations, round_label=f" round {round_}" if round_ else "")
    masked_logits = builder.logits(cell, masked, data, f"{cell.mask.name} model round {round_}")
    explain_test = builder.explain(cell, raw, masked, data)
    explain_train = builder.explain(cell, raw, masked, data, split="train")
    seeds = builder.seeds(cell.seeder, explain_train)
    segment = builder.segment(cell.segmenter, explain_train, [seeds], data, split="train")
    accept = builder.accept(chain.acceptor, data, annotations, explain_train, segment,
                            f"accept {chain.acceptor.name} round {round_} seed={cell.seed}")
    return RoundPlan(chain, round_, data, raw_logits, annotations, masked_logits, explain_test, explain_train,
                     segment, accept)


def round_scores(rp: RoundPlan, runner: StageRunner, registry, cam_threshold: float, failed=()) -> dict:
    """One round's measurements of one chain, from cached artifacts (no model is run). Measurements whose
    stage is in ``failed`` (the round's segmentation or acceptance) are NaN."""
    test, train = runner.data(rp.data, "test"), runner.data(rp.data, "train")
    raw = load_arrays(runner.path("logits", rp.raw_logits))["test"]
    masked = load_arrays(runner.path("logits", rp.masked_logits))["test"]
    logits = mixed_logits(rp.chain.cell.ensemble, registry, raw, masked)
    explained = load_arrays(runner.path("explain", rp.explain_test))
    truth = test["references"][explained["index"]]
    jaccard = metrics.iou(metrics.binarise_fixed(explained["maps"].astype(np.float32), cam_threshold), truth)
    index = np.flatnonzero(train["has_mask"])  # the explained, segmented and renewed training images
    references = train["references"][index]
    current = runner.annotations(rp.data, rp.annotations)[index]
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
        proposals = unpack_masks(load_arrays(runner.path("segment", rp.segment)), 0)
        out["proposal_iou"] = metrics.mean_excluding_nan(metrics.iou(proposals, references))[0]
    if rp.accept not in failed and len(index):
        accepted = load_arrays(runner.path("accept", rp.accept))
        out.update(accepted=float(accepted["accepted"].mean()), changed=float(accepted["changed"].mean()))
    return out


def summarise(rows: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """Per configuration and round: each metric's mean over seeds with a 95% t interval over seeds (clipped
    to the metric's range [0, 1]), and for ``CHANGE_METRICS`` the paired change from round 0 with its own
    interval. Rows without a model measurement (failed rounds) are left out. A chain that converged (its
    annotations stopped changing) counts with its last round's values in the rounds after it: they would
    train on the same annotations again. A chain stopped by ``loop.min_changed`` is not carried."""
    measured = rows[rows["accuracy"].notna()] if "accuracy" in rows else rows.iloc[:0]
    out = []
    for labels, group in measured.groupby(list(LABELS), sort=False, dropna=False):
        per_seed = {seed: _carried(runs.set_index("round").sort_index(), rounds) for seed, runs in group.groupby("seed")}
        for round_ in range(rounds + 1):
            present = {s: r.loc[round_] for s, r in per_seed.items() if round_ in r.index}
            if not present:
                continue
            row = {**dict(zip(LABELS, labels)), "round": round_, "seeds": len(present),
                   "reference": next(iter(present.values()))["reference"]}
            for metric in METRICS:  # every one a share or an IoU: intervals are clipped to [0, 1]
                values = np.array([float(r[metric]) for r in present.values()])
                row[metric] = metrics.mean_excluding_nan(values)[0]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = np.clip(stats.seed_ci(values), 0.0, 1.0)
            for metric in CHANGE_METRICS:
                change = np.array([float(r[metric]) - float(per_seed[s].loc[0, metric]) for s, r in present.items()
                                   if 0 in per_seed[s].index])
                row[f"{metric}_change"] = metrics.mean_excluding_nan(change)[0]
                row[f"{metric}_change_ci_low"], row[f"{metric}_change_ci_high"] = stats.seed_ci(change)
            out.append(row)
    return pd.DataFrame(out)


def varying_labels(summary: pd.DataFrame) -> list[str]:
    """The label columns (``LABELS``) that tell a summary's configurations apart."""
    return [c for c in LABELS if summary[c].astype(str).nunique() > 1]


def _carried(runs: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """One chain's rows by round, its last row repeated up to ``rounds`` if the chain converged."""
    last = runs.index[-1]
    if runs.loc[last, "status"] != "converged" or last >= rounds:
        return runs
    carried = pd.DataFrame([runs.loc[last]] * (rounds - last), index=range(last + 1, rounds + 1))
    return pd.concat([runs, carried])


def _round_row(rp: RoundPlan, failed: dict, runner, registry, grid: Grid) -> dict:
    """One chain's row of one round: its labels, measurements and status: "done"; "converged" when the
    round changed no annotation; "stopped" when it changed at most ``loop.min_changed`` of them; "failed"
    with the error (with the model's measurements where only the round's annotation stages failed)."""
    row = {**rp.chain.labels(), "round": rp.round, "status": "done"}
    broken = [failed[k] for k in rp.model_keys if k in failed]
    if broken:
        return {**row, "status": "failed", "error": broken[0]}
    try:
        scores = round_scores(rp, runner, registry, grid.protocol.cam_threshold, failed)
    except Exception as exc:  # a scoring bug fails the chain, not the loop
        return {**row, "status": "failed", "error": f"scoring: {type(exc).__name__}: {exc}"}
    broken = [failed[k] for k in rp.annotation_keys if k in failed]
    if broken:
        return {**row, **scores, "status": "failed", "error": broken[0]}
    if scores["changed"] == 0:
        row["status"] = "converged"
    elif scores["changed"] <= grid.loop.min_changed:
        row["status"] = "stopped"
    return {**row, **scores}


def _write_tables(out_dir: Path, rows: list[dict], rounds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    seeds = pd.DataFrame(rows)
    summary = summarise(seeds, rounds) if len(seeds) else pd.DataFrame()
    atomic_write_text(out_dir / "loop_seeds.csv", seeds.to_csv(index=False))
    atomic_write_text(out_dir / "loop.csv", summary.to_csv(index=False))
    return seeds, summary


def loop(grid_path, out_dir, *, retry_failed: bool = False, executor_override: dict | None = None,
         registry=None, progress: bool = True) -> dict:
    """Run the annotation loop of a grid into ``out_dir``; returns the summary (also in ``loop.json``).

    Writes ``loop.csv`` (per configuration and round, over seeds), ``loop_seeds.csv`` (per chain and
    round), ``loop_report.html`` and ``figures/loop_*.png``; the tables are rewritten after every round.
    ``out_dir`` may be the folder of ``xaibench run`` on the same grid: the two share the cache (round 0
    reuses the run's models) and write different files."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    registry = registry or get_registry()
    grid, found, builder = load_loop_grid(grid_path, registry)
    apply_executor_override(grid, executor_override, registry)
    executor = checked_executor(grid, registry)
    out_dir = Path(out_dir)
    store = Store(out_dir)
    rounds, rows, plans = grid.loop.rounds, [], {}
    counts = {"stages_run": 0, "stages_reused": 0, "stages_failed": 0, "trainings_run": 0, "trainings_reused": 0}
    try:
        store.lock()
        copy_grid(grid_path, out_dir)
        runner = StageRunner(store.cache, registry, device=grid.device, progress=progress)
        annotations: dict[Chain, str | None] = {chain: None for chain in found}
        executed: set[str] = set()
        failed: dict[str, str] = {}
        try:
            for round_ in range(rounds + 1):
                if not annotations:
                    break
                round_plans = [plan_round(builder, chain, round_, a) for chain, a in annotations.items()]
                new = {k: s for k, s in builder.stages.items() if k not in executed}
                if progress:
                    tqdm.write(f"round {round_}: {len(round_plans)} chain(s), {len(new)} stage(s)")
                result = execute(Plan(new, []), store, runner, executor, progress=progress, retry_failed=retry_failed)
                executed |= set(new)
                failed.update(result.pop("failed"))
                for key in counts:
                    counts[key] += result[key]
                for rp in round_plans:
                    row = _round_row(rp, failed, runner, registry, grid)
                    rows.append(row)
                    if row["status"] != "failed":
                        plans.setdefault(rp.chain, []).append(rp)
                    if round_ == rounds or row["status"] != "done":
                        annotations.pop(rp.chain)
                    else:
                        annotations[rp.chain] = rp.accept
                seeds_table, summary = _write_tables(out_dir, rows, rounds)
        finally:
            executor.close()
        from . import figures, report

        written = figures.loop_figures(summary, plans, runner, out_dir)
        info = {
            "grid": grid.name, "chains": len(found), "rounds": rounds,
            "chains_failed": int(sum(r["status"] == "failed" for r in rows)),
            "chains_converged": int(sum(r["status"] == "converged" and r["round"] < rounds for r in rows)),
            "chains_stopped": int(sum(r["status"] == "stopped" and r["round"] < rounds for r in rows)),
            **counts, "wall_s": round(time.perf_counter() - started, 3), "device": runner.device,
            "figures": [str(p.relative_to(out_dir)) for p in written], "report": "loop_report.html",
        }
        atomic_write_text(out_dir / "loop_report.html",
                          report.loop_page(f"xaibench annotation loop: {grid.name}", summary, seeds_table,
                                           figures=written, run_info=info, grid_text=Path(grid_path).read_text()))
        atomic_write_text(out_dir / "loop.json", json.dumps(info, indent=2))
        return info
    finally:
        store.close()
