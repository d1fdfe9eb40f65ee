"""The conformance check of executors: every task's result, in task order, then ``close()``."""

from __future__ import annotations

from xaibench.kit.testing._core import _call, _expect, _label


def _executor_task(task: int) -> tuple[int, int]:
    return task, task * task


def check_executor(executor, *, name: str | None = None) -> None:
    """``map(fn, tasks)``: ``fn(task)`` for every task, in task order, for any iterable of tasks (none: no
    results); ``close()`` afterwards. ``fn`` is a picklable module-level function."""
    label = _label("executors", executor, name)
    for method in ("map", "close"):
        _expect(callable(getattr(executor, method, None)), label, f"it has no {method}() method",
                "define map(self, fn, tasks) and close(self)")
    tasks = [3, 1, 4, 1, 5, 9, 2, 6]
    try:
        results = list(_call(label, "map(fn, tasks)", executor.map, _executor_task, iter(tasks)))
        _expect(results == [_executor_task(t) for t in tasks], label, f"map(fn, tasks) gave {results!r}",
                "yield fn(task) for every task, in the order of the tasks")
        none = list(_call(label, "map(fn, [])", executor.map, _executor_task, []))
        _expect(none == [], label, f"map(fn, []) gave {none!r}", "yield nothing for no tasks")
    finally:
        _call(label, "close()", executor.close)
