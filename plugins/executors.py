"""Executors run independent stage tasks: ``local`` in this process, ``process`` in worker processes.

Workers only compute and write their own artifacts (atomically); the driver alone records results in
the store. Results are identical under every executor: each stage seeds its own randomness.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

from pydantic import Field

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


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor:
    """Runs tasks in ``workers`` processes started with the spawn method (safe with CUDA and threads).

    Each worker uses ``threads`` torch threads (default: the CPU count divided by the workers), and loads
    plugins from installed entry points: components registered only in the driver are not available."""

    def __init__(self, *, workers: Annotated[int, Field(ge=1)] = 2,
                 threads: Optional[Annotated[int, Field(ge=1)]] = None):
        self.workers = workers
        self.threads = threads
        self._pool = None

    def _ensure_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_limit_threads, initargs=(threads,))
        return self._pool

    def map(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return iter(())
        return self._ensure_pool().map(fn, tasks)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
    register("process", ProcessExecutor)
