"""How close the run's scheduler comes to the best possible makespan, from a run's recorded stage times.

    python benchmarks/schedule.py RUN_DIR [--workers 2,4,8,16,32,64]

Reads the grid copied into a finished run folder (``RUN_DIR/grid.yaml``), plans it, and takes each stage's
seconds from ``RUN_DIR/store.sqlite``. Then it simulates, for each worker count P:

- ``dependencies``: what ``xaibench.pipeline.engine`` does with an executor that has ``submit``/``next_result``: a
  stage starts as soon as its inputs are done and a worker is free, the ready stage with the largest
  expected chain below it (``engine.priorities``, from rough costs per kind, not from the recorded times)
  first;
- ``waves``: what it did before, and still does with ``map``-only executors: one wave of stages per depth
  of the graph, each wave list-scheduled, then a barrier;

and divides each makespan by the list-scheduling reference: the same dependency-driven schedule with the
recorded times known in advance (priorities from the true longest chain below each stage). It also gives
the plain lower bound of any schedule, max(critical path, total work / P), which precedence can make
unreachable (with 4 workers and 2 trainings to start, 2 workers must wait). Prints JSON per P.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

from xaibench.kit.registry import get_registry
from xaibench.pipeline.engine import priorities
from xaibench.pipeline.plan import plan_run


def recorded_stages(run_dir: Path) -> list[SimpleNamespace]:
    """The run's stages in dependency order, each with ``key``, ``kind``, ``deps``, ``expected_cost`` (its
    kind's rough cost, what the engine schedules by) and ``seconds``."""
    _, plan = plan_run(run_dir / "grid.yaml", get_registry())
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        seconds = dict(db.execute("SELECT key, seconds FROM stages WHERE status = 'done'"))
    return [SimpleNamespace(key=s.key, kind=s.kind, deps=s.deps, expected_cost=s.expected_cost,
                            seconds=float(seconds.get(s.key) or 0.0))
            for s in plan.stages.values() if s.key in seconds]


def lower_bound(stages, workers: int) -> float:
    finish: dict[str, float] = {}
    for stage in stages:
        finish[stage.key] = stage.seconds + max((finish[d] for d in stage.deps if d in finish), default=0.0)
    return max(max(finish.values()), sum(s.seconds for s in stages) / workers)


def known_priorities(stages) -> dict[str, float]:
    """Bottom levels from the recorded times (what a scheduler that knew every duration would use)."""
    return priorities(stages, cost=lambda stage: stage.seconds)


def by_dependencies(stages, workers: int, level=None) -> float:
    level = level or priorities(stages)
    keys = {s.key for s in stages}
    waiting = {s.key: {d for d in s.deps if d in keys} for s in stages}
    dependants = {s.key: [] for s in stages}
    for stage in stages:
        for dep in waiting[stage.key]:
            dependants[dep].append(stage)
    ready = [s for s in stages if not waiting[s.key]]
    running: list[tuple[float, int, SimpleNamespace]] = []  # (finish time, tie, stage)
    now, tie = 0.0, 0
    while ready or running:
        ready.sort(key=lambda s: -level[s.key])
        while ready and len(running) < workers:
            stage = ready.pop(0)
            tie += 1
            heapq.heappush(running, (now + stage.seconds, tie, stage))
        now, _, stage = heapq.heappop(running)
        for child in dependants[stage.key]:
            waiting[child.key].discard(stage.key)
            if not waiting[child.key]:
                ready.append(child)
    return now


def by_waves(stages, workers: int) -> float:
    depth: dict[str, int] = {}
    for stage in stages:
        depth[stage.key] = 1 + max((depth[d] for d in stage.deps if d in depth), default=-1)
    now = 0.0
    for level in sorted(set(depth.values())):
        free = [now] * workers
        for stage in (s for s in stages if depth[s.key] == level):  # in plan order, to the earliest free worker
            start = heapq.heappop(free)
            heapq.heappush(free, start + stage.seconds)
        now = max(free)
    return now


def compare(run_dir: Path, workers=(2, 4, 8, 16, 32, 64)) -> dict:
    stages = recorded_stages(Path(run_dir))
    if not stages:
        raise SystemExit(f"{run_dir}: no finished stage of its grid is recorded (a run by another xaibench version "
                         f"has other stage keys): run the grid with this version first")
    out = {"stages": len(stages), "work_seconds": sum(s.seconds for s in stages)}
    known = known_priorities(stages)
    for p in workers:
        reference = by_dependencies(stages, p, known)
        bound = lower_bound(stages, p)
        out[str(p)] = {"reference_s": reference, "lower_bound_s": bound,
                       "dependencies": by_dependencies(stages, p) / reference, "waves": by_waves(stages, p) / reference,
                       "reference_over_lower_bound": reference / bound}
    out["dependencies_worst"] = max(out[str(p)]["dependencies"] for p in workers)
    out["waves_worst"] = max(out[str(p)]["waves"] for p in workers)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--workers", default="2,4,8,16,32,64")
    args = parser.parse_args()
    json.dump(compare(args.run_dir, [int(w) for w in args.workers.split(",")]), sys.stdout, indent=2)
    print()
