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


def _call_with_threads(fn, task, threads):
    if threads is not None:
        _limit_threads(threads)
    return fn(task)


class RayExecutor:
    """Runs each stage as a Ray task declaring ``cpus`` and ``gpus`` per task, on a local Ray started
    here (``num_cpus`` CPUs) or on an existing cluster (``address``, e.g. ``ray://head:10001`` or
    ``auto``). Needs the ``ray`` extra: ``pip install "xaibench[ray]"``.

    Workers return results; the driver alone writes the store. ``threads`` sets torch's threads in each
    task (default: ``cpus``); give the driver's thread count for results identical to ``local``."""

    def __init__(self, *, address: Optional[str] = None, num_cpus: Optional[Annotated[int, Field(ge=1)]] = None,
                 cpus: Annotated[float, Field(gt=0)] = 1.0, gpus: Annotated[float, Field(ge=0)] = 0.0,
                 threads: Optional[Annotated[int, Field(ge=1)]] = None):
        self.address = address
        self.num_cpus = num_cpus
        self.cpus = cpus
        self.gpus = gpus
        self.threads = threads
        self._started = False

    def _ray(self):
        try:
            import ray
        except ImportError:
            from xaibench.errors import UserError

            raise UserError('the ray executor needs Ray: pip install "xaibench[ray]"') from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def check(self):
        self._ray()

    def map(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        ray = self._ray()
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_call_with_threads)
        threads = self.threads or max(1, int(self.cpus))
        refs = [remote.remote(fn, task, threads) for task in tasks]
        for ref in refs:
            yield ray.get(ref)

    def close(self):
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
    register("process", ProcessExecutor)
    register("ray", RayExecutor)
