"""Executors run independent stage tasks; ``local`` runs them one after another in this process."""

from __future__ import annotations

from xaibench.hookspecs import hookimpl


class LocalExecutor:
    """Runs each task in the calling process, in order (the default, and the reference for results)."""

    def __init__(self):
        pass

    def map(self, fn, tasks):
        for task in tasks:
            yield fn(task)

    def close(self):
        pass


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
