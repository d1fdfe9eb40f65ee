"""Executors run independent stage tasks: ``local`` in this process, ``process`` in worker processes.

Workers only compute and write their own artifacts (atomically); the driver alone records results in
the store. Results are identical under every executor: each stage seeds its own randomness.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import traceback
from typing import Annotated, Optional

from pydantic import Field

from xaibench.errors import WorkerLost
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


def _worker(conn, threads: int) -> None:
    """A worker process: runs the tasks it is sent, one at a time, until told to stop. Functions arrive
    pickled once per worker and are kept, so what they load (a stage runner's data) stays loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it ends the workers
    _limit_threads(threads)
    functions = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, fn_id, fn_blob, task = message
        if fn_blob is not None:
            functions[fn_id] = pickle.loads(fn_blob)
        try:
            conn.send((index, True, functions[fn_id](task)))
        except BaseException as exc:  # reported to the driver, which raises it there
            conn.send((index, False, "".join(traceback.format_exception(exc))))


class _Worker:
    def __init__(self, context, threads: int):
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_worker, args=(theirs, threads), daemon=True)
        self.process.start()
        theirs.close()
        self.known: set[str] = set()  # the functions this worker holds
        self.task: int | None = None  # the index of the task it is running

    def send(self, index: int, fn_id: str, fn_blob: bytes, task) -> None:
        self.conn.send((index, fn_id, None if fn_id in self.known else fn_blob, task))
        self.known.add(fn_id)
        self.task = index

    def stop(self, timeout: float = 1.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessExecutor:
    """Runs tasks in ``workers`` processes started with the spawn method (safe with CUDA and threads).

    Each worker uses ``threads`` torch threads (default: the CPU count divided by the workers), and loads
    plugins from installed entry points: components registered only in the driver are not available.
    Workers stay up between tasks and keep what the stage runner loaded. A worker that dies (killed, or
    out of memory) fails the task it was running, which is yielded as ``xaibench.errors.WorkerLost``, and
    is replaced; the other tasks go on."""

    def __init__(self, *, workers: Annotated[int, Field(ge=1)] = 2,
                 threads: Optional[Annotated[int, Field(ge=1)]] = None):
        self.workers = workers
        self.threads = threads
        self._pool: list[_Worker] = []
        self._context = None

    def _start(self) -> _Worker:
        import multiprocessing

        self._context = self._context or multiprocessing.get_context("spawn")
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        return _Worker(self._context, threads)

    def map(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        from multiprocessing.connection import wait

        blob = pickle.dumps(fn)
        fn_id = hashlib.sha256(blob).hexdigest()
        while len(self._pool) < min(self.workers, len(tasks)):
            self._pool.append(self._start())
        results: dict[int, object] = {}
        queue = list(range(len(tasks)))
        done = 0
        try:
            while done < len(tasks):
                for worker in self._pool:
                    if worker.task is None and queue:
                        index = queue.pop(0)
                        worker.send(index, fn_id, blob, tasks[index])
                busy = [w for w in self._pool if w.task is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    if worker.conn in ready and worker.conn.poll():
                        try:
                            index, ok, value = worker.conn.recv()
                        except (EOFError, OSError):
                            index, ok, value = worker.task, None, None
                    elif worker.process.sentinel in ready:
                        index, ok, value = worker.task, None, None
                    else:
                        continue
                    if ok is None:  # the process died with the task
                        worker.process.join(5)
                        code = worker.process.exitcode
                        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        results[index] = WorkerLost(f"worker died ({how}: killed or out of memory?) while running "
                                                    f"it; run again with --retry-failed, with fewer workers or a "
                                                    f"smaller batch_size")
                        self._pool[self._pool.index(worker)] = self._start()
                        worker.stop(timeout=0)
                    elif not ok:
                        raise RuntimeError(f"a task raised in a worker process:\n{value}")
                    else:
                        results[index] = value
                        worker.task = None
                while done in results:
                    yield results.pop(done)
                    done += 1
        except GeneratorExit:  # the caller stopped reading: the workers stay for the next map
            raise
        except BaseException:
            self.close()  # Ctrl-C or an error: end the workers now, not after their tasks
            raise

    def close(self):
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop(timeout=0 if worker.task is not None else 1.0)


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
            try:
                yield ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError,
                    ray.exceptions.NodeDiedError) as exc:
                yield WorkerLost(f"worker died ({type(exc).__name__}: killed or out of memory?) while running it; run "
                                 f"again with --retry-failed, with fewer tasks per node or a smaller batch_size")

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
