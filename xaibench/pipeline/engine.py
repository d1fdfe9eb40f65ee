"""The engine: a run folder held by one command, and the execution of planned stages in it.

``RunFolder`` is one context: the results store (locked against a second command), the grid copied beside
it, the stage runner and the executor. ``execute`` runs every stage not already done and records each
result; it returns a ``RunCounts`` and the failure behind every stage that did not finish.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from operator import attrgetter
from pathlib import Path

from xaibench.errors import ContractViolation, UserError, WorkerLost
from xaibench.kit.contracts import capability, validate_result
from xaibench.kit.files import atomic_write_text
from xaibench.pipeline.grid import SECTION_KIND, ComponentSpec, Grid, all_choices
from xaibench.pipeline.plan import TRAINING_KINDS, Stage
from xaibench.pipeline.records import Failure, RunCounts, StageResult, Status
from xaibench.pipeline.stages import StageRunner
from xaibench.pipeline.store import RunLock, Store, file_digest
from xaibench.pipeline.training import resolve_device
from xaibench.version import __version__


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
    """Keep the grid beside its results (unless it is that copy, rerun from the results folder), with a
    ``base_dir`` naming the original's folder where it has none, so the copy's relative paths still
    lead to the same files."""
    target = Path(out_dir) / "grid.yaml"
    if target.exists() and target.resolve() == Path(grid_path).resolve():
        return
    text = Path(grid_path).read_text(encoding="utf-8")
    if not re.search(r"^base_dir\s*:", text, flags=re.MULTILINE):
        folder = json.dumps(str(Path(grid_path).resolve().parent))
        text = (text.rstrip("\n") + "\n# added by xaibench: relative paths above are read from the original's "
                f"folder\nbase_dir: {folder}\n")
    atomic_write_text(target, text)


def check_out_dir(out: Path, *, rebuild_store: bool = False) -> None:
    """Refuse, before anything is written, an output folder a run cannot or should not use: a file, the
    filesystem's root or the home folder, a folder holding other files (not a run folder), or one that
    cannot be written (permissions, a read-only or immutable filesystem)."""
    out = Path(out).expanduser()
    what = f"--out {str(out)!r}"
    try:
        resolved = out.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise UserError(f"{what} cannot be resolved ({exc}); a symbolic link on the way loops, fix or remove "
                        f"it, or give another folder") from None
    if resolved == Path(resolved.anchor):
        raise UserError(f"{what} is the root of the filesystem; give a folder of its own, e.g. runs/my-grid")
    if resolved == Path.home().resolve():
        raise UserError(f"{what} is your home folder; give a folder of its own, e.g. ~/runs/my-grid")
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} is a file, not a folder; give a folder (new, or an earlier run's)")
    if out.is_dir():
        is_run = (out / "store.sqlite").is_file() or (rebuild_store and (out / "cache").is_dir())
        if not is_run and (out / "cache").is_dir():
            raise UserError(f"{what} holds a run's stage results (cache/) but no store.sqlite, its record of them "
                            f"(deleted or moved?); run the same command again with --rebuild-store to record "
                            f"again every stage whose results are on disk")
        if not is_run and {p.name for p in out.iterdir()} - {".lock"}:  # a lock a killed command left is ours
            raise UserError(f"{what} holds files but no xaibench run (no store.sqlite); give a new or empty "
                            f"folder, or the --out folder of an earlier run")
        _check_writable(out, what)
        return
    parent = next(p for p in resolved.parents if p.exists())
    if not parent.is_dir():
        raise UserError(f"{what}: {parent} is a file, so the folder cannot be made")
    _check_writable(parent, f"{what}: its parent {str(parent)!r}")


def _check_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only test that also catches read-only and immutable
    filesystems for a privileged user."""
    try:
        handle = tempfile.TemporaryFile(dir=folder)
    except OSError as exc:
        raise UserError(f"{what} cannot be written ({exc.strerror or exc}); choose a folder you can write to") from None
    handle.close()


class RunFolderVanished(UserError):
    """The run folder was deleted or moved away while a command was running in it."""

    def __init__(self, out: Path):
        super().__init__(f"the run folder {str(out)!r} vanished during the run (deleted or moved while the run was "
                         f"writing to it); nothing more can be recorded there. Remove what is left of it, if anything, "
                         f"and run the same command again; keep other programs away from --out while it runs")


class RunFolder:
    """The run folder of one command: store (locked), grid copy, stage runner and executor.

    Use as a context manager; the folder is checked and the executor built and checked before anything
    is written, and the executor, the store and the lock are closed on the way out whatever happens.
    ``rebuild_store``: a store that cannot be read is moved aside and a new one records every planned
    stage whose artifacts are on disk and load (see ``execute``)."""

    def __init__(self, out_dir, grid_path, grid: Grid, registry, *, progress: bool = True,
                 rebuild_store: bool = False):
        self.out = Path(out_dir)
        self.grid_path = Path(grid_path)
        self.grid = grid
        self.registry = registry
        self.progress = progress
        self.rebuild_store = rebuild_store
        self.executor = None
        self.lock: RunLock | None = None
        self.store: Store | None = None
        self.runner: StageRunner | None = None

    def __enter__(self) -> "RunFolder":
        check_out_dir(self.out, rebuild_store=self.rebuild_store)
        resolve_device(self.grid.device, what=f"{self.grid_path}: device")  # torch is imported from here on
        self.executor = checked_executor(self.grid, self.registry)
        try:
            created = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out)
            self.lock.acquire()
            check_folder = capability(self.executor, "check_folder", "executors")
            if check_folder is not None:
                try:
                    check_folder(self.out)  # every worker sees the folder the stages are written to
                except UserError:
                    self.lock.release()
                    self.lock = None
                    if created:
                        self.out.rmdir()
                    raise
            self.store = self._open_store()
            copy_grid(self.grid_path, self.out)
            self.runner = StageRunner(self.store.cache, self.registry, device=self.grid.device,
                                      progress=self.progress)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close()
        if exc is not None and not isinstance(exc, (UserError, KeyboardInterrupt)) and self.vanished():
            raise RunFolderVanished(self.out) from exc

    def vanished(self) -> bool:
        """Whether the run folder (its store) was deleted or moved away while the command held it."""
        return not (self.out / "store.sqlite").is_file()

    def check_present(self) -> None:
        """Raise ``RunFolderVanished`` if the run folder is gone: nothing can be recorded in it, and a
        stage that failed for that reason failed through no component's fault."""
        if self.vanished():
            raise RunFolderVanished(self.out)

    def close(self) -> None:
        if self.executor is not None:
            close = capability(self.executor, "close", "executors")
            self.executor = None
            if close is not None:
                close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _open_store(self) -> Store:
        try:
            return Store(self.out)
        except UserError:
            if not self.rebuild_store:
                raise
        broken = self.out / f"store.sqlite.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.out / "store.sqlite", broken)
        echo_warning(f"{self.out / 'store.sqlite'} could not be read; moved to {broken.name}, and the records are "
                     f"rebuilt from the artifacts in {self.out / 'cache'}")
        return Store(self.out)

    @property
    def artifacts(self):
        return self.runner.artifacts

    def settings(self) -> dict:
        """What changes a cell's numbers besides its labels: the training and fine-tuning settings, the
        scoring protocol, and the version of xaibench and of each component's distribution (``versions``,
        keyed ``kind:name``). Recorded with the grid's cells (``Store.record_cells``), so a merged
        leaderboard can refuse to pool cells computed differently."""
        versions = {"xaibench": __version__}
        for section, kind in SECTION_KIND.items():
            for choice in all_choices(getattr(self.grid, section)):
                component = self.registry.get(kind, choice.name)
                versions[f"{kind}:{choice.name}"] = f"{component.distribution} {component.version}"
        return {"train": self.grid.train.keyed(), "finetune": self.grid.finetune.keyed(),
                "protocol": self.grid.protocol.model_dump(exclude={"eval_batch_size"}), "versions": versions}


def echo_warning(line: str) -> None:
    """One ``warning:`` line on stderr, above any progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"warning: {line}", file=sys.stderr)


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

    store = folder.store
    counts = RunCounts()
    known = dict(failed or {})
    failed_now: dict[str, Failure] = {}
    todo = []
    for stage in stages.values():
        record = store.stage(stage.key)
        if record is None and folder.rebuild_store and _recover(stage, folder):
            record = store.stage(stage.key)
        if record and record["status"] == Status.DONE and _trusted(stage, folder):
            counts.stages_reused += 1
            counts.trainings_reused += stage.kind in TRAINING_KINDS
        elif record and record["status"] == Status.FAILED and not retry_failed and not record["meta"].get("transient"):
            meta = record["meta"]
            failed_now[stage.key] = Failure(stage.label, meta.get("component", ""),
                                            f"{meta.get('message', 'failed')} (earlier run; --retry-failed reruns it)")
            counts.stages_failed += 1
        else:
            todo.append(stage.key)
    pending = [stages[key] for key in todo]
    # not left on screen (the command prints its summary next); off where stderr is no terminal (a log file)
    with tqdm(total=len(todo), desc="stages", unit="stage", disable=(not folder.progress) or None, leave=False,
              dynamic_ncols=True) as bar:
        def skipped(stage: Stage) -> bool:
            """A stage whose input failed fails with that failure, and is not run."""
            broken = [d for d in stage.deps if d in failed_now or d in known]
            if broken:
                failed_now[stage.key] = failed_now.get(broken[0]) or known[broken[0]]
                counts.stages_failed += 1
                bar.update(1)
            return bool(broken)

        def finished(stage: Stage, result: StageResult) -> None:
            folder.check_present()  # a stage that lost its folder failed through no component's fault
            bar.update(1)
            if result.ok:
                store.record_stage(stage.key, stage.kind, stage.label, Status.DONE, meta=result.meta,
                                   seconds=result.seconds, files=result.files)
                counts.stages_run += 1
                counts.trainings_run += stage.kind in TRAINING_KINDS
            else:
                store.record_stage(stage.key, stage.kind, stage.label, Status.FAILED, error=result.traceback,
                                   meta={"message": result.error, "component": result.component,
                                         "transient": result.transient}, seconds=result.seconds)
                failure = Failure(stage.label, result.component, result.error)
                failed_now[stage.key] = failure
                counts.stages_failed += 1
                tqdm.write(f"stage failed: {failure.line()}", file=sys.stderr)

        executor = folder.executor
        if capability(executor, "submit", "executors") and capability(executor, "next_result", "executors"):
            _by_dependencies(folder, pending, skipped, finished)
        else:
            _by_waves(folder, pending, skipped, finished)
    return Execution(counts, failed_now)


def priorities(stages: list, cost=attrgetter("expected_cost")) -> dict[str, float]:
    """Each stage's ``cost`` (default: its kind's rough cost, ``plan.StageKind.cost``) plus the largest of
    its dependants' priorities (the "bottom level" of list scheduling), over the stages given, in
    dependency order: the scheduler starts the longest chain of expected work first."""
    keys = {s.key for s in stages}
    children: dict[str, list[str]] = {s.key: [] for s in stages}
    for stage in stages:
        for dep in stage.deps:
            if dep in keys:
                children[dep].append(stage.key)
    level: dict[str, float] = {}
    for stage in reversed(stages):
        level[stage.key] = cost(stage) + max((level[c] for c in children[stage.key]), default=0.0)
    return level


def _by_waves(folder: RunFolder, pending: list[Stage], skipped, finished) -> None:
    """Executors with ``map`` alone: one wave of stages per depth of the graph."""
    depth = _depths({s.key: s for s in pending})
    for level in sorted(set(depth.values())):
        ready = [s for s in pending if depth[s.key] == level and not skipped(s)]
        for stage, result in _results(folder, ready):
            finished(stage, result)


def _by_dependencies(folder: RunFolder, pending: list[Stage], skipped, finished) -> None:
    """Executors with ``submit``/``next_result``: each stage starts as soon as its own inputs are done,
    the ready stage with the longest expected chain below it first, at most ``slots`` at a time."""
    executor = folder.executor
    slots = max(1, int(capability(executor, "slots", "executors") or 1))
    keys = {s.key for s in pending}
    waiting = {s.key: {d for d in s.deps if d in keys} for s in pending}
    dependants: dict[str, list[Stage]] = {s.key: [] for s in pending}
    for stage in pending:
        for dep in waiting[stage.key]:
            dependants[dep].append(stage)
    level = priorities(pending)
    ready = [s for s in pending if not waiting[s.key]]
    running: dict[object, Stage] = {}

    def settle(stage: Stage) -> None:
        """``stage`` is finished or failed: its dependants may now be ready (or fail with it)."""
        for child in dependants[stage.key]:
            waiting[child.key].discard(stage.key)
            if not waiting[child.key]:
                ready.append(child)

    while ready or running:
        ready.sort(key=lambda s: -level[s.key])
        while ready and len(running) < slots:
            stage = ready.pop(0)
            if skipped(stage):
                settle(stage)
                continue
            running[executor.submit(folder.runner, stage)] = stage
        if not running:
            continue
        ticket, result = executor.next_result()
        stage = running.pop(ticket)
        finished(stage, _checked(folder, stage, result))
        settle(stage)


def relative_files(folder: RunFolder, stage: Stage) -> list[tuple[str, Path]]:
    """``(path relative to the run folder, absolute path)`` of every file ``stage`` writes."""
    return [(str(p.relative_to(folder.out)), p) for p in folder.artifacts.files(stage.kind, stage.key)]


def _trusted(stage: Stage, folder: RunFolder) -> bool:
    """Whether every file of a done stage is the one it wrote (size and hash, see ``store.check_file``);
    a missing or changed file is named in one warning line and its stage computed again."""
    for relative, _ in relative_files(folder, stage):
        problem = folder.store.verify(relative)
        if problem is not None:
            echo_warning(f"{folder.out / relative} cannot be reused: {problem}; computing '{stage.label}' again")
            return False
    return True


def _recover(stage: Stage, folder: RunFolder) -> bool:
    """``--rebuild-store``: record a stage with no record as done when all its files are on disk and load
    (they were written atomically, so a complete file is a finished stage's)."""
    files = relative_files(folder, stage)
    if not all(path.is_file() for _, path in files) or folder.artifacts.unreadable(stage.kind, stage.key):
        return False
    folder.store.record_stage(stage.key, stage.kind, stage.label, Status.DONE, meta={"recovered": True},
                              files={relative: file_digest(path) for relative, path in files})
    return True


def _results(folder: RunFolder, ready: list[Stage]):
    """``(stage, result)`` for each stage the executor ran, its results checked against the executor
    contract: one per task, in task order. A stage whose result is missing or is another stage's gets a
    failed result naming the executor."""
    if not ready:
        return
    results = iter(folder.executor.map(folder.runner, ready))
    for position, stage in enumerate(ready):
        missing = f"map() gave {position} results for {len(ready)} tasks; give one result per task, in task order"
        yield stage, _checked(folder, stage, next(results, None), missing=missing)


def _checked(folder: RunFolder, stage: Stage, result, missing: str = "no result") -> StageResult:
    """An executor's result for ``stage`` checked against the executor contract: a missing result
    (``None``: ``missing`` says why) or a malformed one becomes a failed result naming the executor. A
    ``WorkerLost`` (the worker died running the stage) becomes one naming the component the stage was
    calling when it died (its breadcrumb, ``StageRunner.breadcrumb``), or the stage's own work where it
    was calling none."""
    who = folder.registry.who("executors", folder.grid.executor.name, folder.grid.executor.name)
    if isinstance(result, WorkerLost):
        culprit = folder.runner.calling_in(stage.key)
        folder.runner.breadcrumb(stage.key).unlink(missing_ok=True)
        where = "" if culprit else " (in xaibench's own work between component calls)"
        return StageResult(stage.key, False, 0.0, error=f"{result}{where}", component=culprit)
    try:
        if result is None:
            raise ContractViolation(missing)
        validate_result(result, stage.key)
    except ContractViolation as exc:
        return StageResult(stage.key, False, 0.0, error=str(exc), component=who)
    return result
