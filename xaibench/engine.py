"""The engine: a run folder held by one command, and the execution of planned stages in it.

``RunFolder`` is one context: the results store (locked against a second command), the grid copied beside
it, the stage runner and the executor. ``execute`` runs every stage not already done and records each
result; it returns a ``RunCounts`` and the failure behind every stage that did not finish.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from .contracts import capability, validate_result
from .errors import ContractViolation
from .grid import ComponentSpec, Grid
from .plan import TRAINING_KINDS, Stage
from .records import Failure, RunCounts, StageResult, Status
from .stages import StageRunner
from .store import Store


def apply_executor_override(grid: Grid, override: dict | None, registry) -> None:
    """Replace the grid's executor by one named on the command line (executors never change results)."""
    if override is None:
        return
    grid.executor = ComponentSpec.model_validate({"name": override["name"], **override.get("params", {})})
    registry.validate("executors", grid.executor.name, grid.executor.params)


def checked_executor(grid: Grid, registry):
    """The grid's executor, built and ``check()``-ed (an unreachable cluster fails before anything runs)."""
    executor = registry.create("executors", grid.executor.name, **grid.executor.params)
    check = capability(executor, "check", "executors")
    if check is not None:
        check()
    return executor


def copy_grid(grid_path, out_dir: Path) -> None:
    """Keep the grid beside its results (unless it is that copy, rerun from the results folder)."""
    target = Path(out_dir) / "grid.yaml"
    if not (target.exists() and target.resolve() == Path(grid_path).resolve()):
        shutil.copyfile(grid_path, target)


class RunFolder:
    """The run folder of one command: store (locked), grid copy, stage runner and executor.

    Use as a context manager; the executor is built and checked before anything is written, and the
    executor and the store are closed on the way out whatever happens."""

    def __init__(self, out_dir, grid_path, grid: Grid, registry, *, progress: bool = True):
        self.out = Path(out_dir)
        self.grid_path = Path(grid_path)
        self.grid = grid
        self.registry = registry
        self.progress = progress
        self.executor = None
        self.store: Store | None = None
        self.runner: StageRunner | None = None

    def __enter__(self) -> "RunFolder":
        self.executor = checked_executor(self.grid, self.registry)
        try:
            self.store = Store(self.out)
            self.store.lock()
            copy_grid(self.grid_path, self.out)
            self.runner = StageRunner(self.store.cache, self.registry, device=self.grid.device,
                                      progress=self.progress)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.executor is not None:
            close = capability(self.executor, "close", "executors")
            self.executor = None
            if close is not None:
                close()
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def artifacts(self):
        return self.runner.artifacts


@dataclasses.dataclass
class Execution:
    """What ``execute`` did: the counters, and for every stage that did not finish the failure behind it
    (a stage skipped because an upstream stage failed maps to that upstream failure)."""

    counts: RunCounts
    failed: dict[str, Failure]


def _depths(stages: dict[str, Stage]) -> dict[str, int]:
    depth: dict[str, int] = {}
    for key, stage in stages.items():  # insertion order is a topological order
        depth[key] = 1 + max((depth.get(d, -1) for d in stage.deps), default=-1)  # absent: done earlier
    return depth


def execute(stages: dict[str, Stage], folder: RunFolder, *, retry_failed: bool = False,
            failed: dict[str, Failure] | None = None) -> Execution:
    """Run every stage not already done; record results in the store.

    A stage that failed in an earlier run stays failed (its cells are reported as failed again) unless
    ``retry_failed``; stages that depend on a failed one are skipped either way. ``failed``: failures
    already known (earlier rounds of the loop), whose dependants are skipped too."""
    from tqdm.auto import tqdm

    store, runner = folder.store, folder.runner
    counts = RunCounts()
    known = dict(failed or {})
    failed_now: dict[str, Failure] = {}
    depth = _depths(stages)
    waves: dict[int, list] = {}
    for key, stage in stages.items():
        waves.setdefault(depth[key], []).append(stage)
    todo = []
    for stage in stages.values():
        record = store.stage(stage.key)
        if record and record["status"] == Status.DONE and runner.artifacts.exists(stage.kind, stage.key):
            counts.stages_reused += 1
            counts.trainings_reused += stage.kind in TRAINING_KINDS
        elif record and record["status"] == Status.FAILED and not retry_failed:
            meta = record["meta"]
            failed_now[stage.key] = Failure(stage.label, meta.get("component", ""),
                                            f"{meta.get('message', 'failed')} (earlier run; --retry-failed reruns it)")
            counts.stages_failed += 1
        else:
            todo.append(stage.key)
    pending = set(todo)
    with tqdm(total=len(todo), desc="stages", unit="stage", disable=not folder.progress, dynamic_ncols=True) as bar:
        for level in sorted(waves):
            ready = []
            for stage in waves[level]:
                if stage.key not in pending:
                    continue
                broken = [d for d in stage.deps if d in failed_now or d in known]
                if broken:
                    failed_now[stage.key] = failed_now.get(broken[0]) or known[broken[0]]
                    counts.stages_failed += 1
                    bar.update(1)
                    continue
                ready.append(stage)
            for stage, result in _results(folder, ready):
                bar.update(1)
                if result.ok:
                    store.record_stage(stage.key, stage.kind, stage.label, Status.DONE, meta=result.meta,
                                       seconds=result.seconds)
                    counts.stages_run += 1
                    counts.trainings_run += stage.kind in TRAINING_KINDS
                else:
                    store.record_stage(stage.key, stage.kind, stage.label, Status.FAILED, error=result.traceback,
                                       meta={"message": result.error, "component": result.component},
                                       seconds=result.seconds)
                    failure = Failure(stage.label, result.component, result.error)
                    failed_now[stage.key] = failure
                    counts.stages_failed += 1
                    tqdm.write(f"stage failed: {failure.line()}", file=sys.stderr)
    return Execution(counts, failed_now)


def _results(folder: RunFolder, ready: list[Stage]):
    """``(stage, result)`` for each stage the executor ran, its results checked against the executor
    contract: one per task, in task order. A stage whose result is missing or is another stage's gets a
    failed result naming the executor."""
    if not ready:
        return
    results = iter(folder.executor.map(folder.runner, ready))
    who = folder.registry.who("executors", folder.grid.executor.name, folder.grid.executor.name)
    for position, stage in enumerate(ready):
        result = next(results, None)
        try:
            if result is None:
                raise ContractViolation(f"map() gave {position} results for {len(ready)} tasks; give one result "
                                        f"per task, in task order")
            validate_result(result, stage.key)
        except ContractViolation as exc:
            result = StageResult(stage.key, False, 0.0, error=str(exc), component=who)
        yield stage, result
