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

from xaibench.errors import UserError, WorkerLost
from xaibench.kit.hookspecs import hookimpl


class LocalExecutor:
    """Runs each task in the calling process, in order (the default, and the reference for results)."""

    def __init__(self):
        pass

    def map(self, fn, tasks):
        for task in tasks:
            yield fn(task)

    def close(self):
        pass


def _in_task_order(executor, fn, tasks):
    """``map`` for an executor with ``submit``/``next_result``: every task submitted at once, the results
    yielded in task order as they come in."""
    tickets = [executor.submit(fn, task) for task in tasks]
    results: dict = {}
    for ticket in tickets:
        while ticket not in results:
            done, value = executor.next_result()
            results[done] = value
        yield results.pop(ticket)


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
    is replaced; the other tasks go on.

    Besides ``map`` it offers ``submit``/``next_result`` and ``slots``, so a run starts each stage as soon
    as its own inputs are done rather than wave by wave."""

    def __init__(self, *, workers: Annotated[int, Field(ge=1)] = 2,
                 threads: Optional[Annotated[int, Field(ge=1)]] = None):
        self.workers = workers
        self.threads = threads
        self._pool: list[_Worker] = []
        self._context = None
        self._queue: list[tuple[int, str, bytes, object]] = []  # submitted, not yet sent to a worker
        self._done: list[tuple[int, object]] = []
        self._tickets = 0

    @property
    def slots(self) -> int:
        return self.workers

    def _start(self) -> _Worker:
        import multiprocessing

        self._context = self._context or multiprocessing.get_context("spawn")
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        return _Worker(self._context, threads)

    def submit(self, fn, task) -> int:
        """Queue ``fn(task)``; returns a ticket that ``next_result`` gives back with the result."""
        blob = pickle.dumps(fn)
        fn_id = hashlib.sha256(blob).hexdigest()
        self._tickets += 1
        self._queue.append((self._tickets, fn_id, blob, task))
        while len(self._pool) < self.workers and len(self._pool) < len(self._queue) + self._running():
            self._pool.append(self._start())
        self._feed()
        return self._tickets

    def _running(self) -> int:
        return sum(w.task is not None for w in self._pool)

    def _feed(self) -> None:
        for worker in self._pool:
            if worker.task is None and self._queue:
                ticket, fn_id, blob, task = self._queue.pop(0)
                worker.send(ticket, fn_id, blob, task)

    def next_result(self):
        """``(ticket, result)`` of a submitted task once one has finished (blocks until then); the result
        is ``WorkerLost`` where the worker running it died."""
        from multiprocessing.connection import wait

        try:
            while not self._done:
                self._feed()
                busy = [w for w in self._pool if w.task is not None]
                if not busy:
                    raise RuntimeError("next_result() with no task submitted")
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    self._collect(worker, ready)
            return self._done.pop(0)
        except BaseException:
            self.close()  # Ctrl-C or an error: end the workers now, not after their tasks
            raise

    def _collect(self, worker: _Worker, ready) -> None:
        if worker.conn in ready and worker.conn.poll():
            try:
                ticket, ok, value = worker.conn.recv()
            except (EOFError, OSError):
                ticket, ok, value = worker.task, None, None
        elif worker.process.sentinel in ready:
            ticket, ok, value = worker.task, None, None
        else:
            return
        if ok is None:  # the process died with the task
            worker.process.join(5)
            code = worker.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._done.append((ticket, WorkerLost(f"worker died ({how}: killed or out of memory?) while running it; "
                                                  f"run again with --retry-failed, with fewer workers or a smaller "
                                                  f"batch_size")))
            self._pool[self._pool.index(worker)] = self._start()
            worker.stop(timeout=0)
        elif not ok:
            raise RuntimeError(f"a task raised in a worker process:\n{value}")
        else:
            self._done.append((ticket, value))
            worker.task = None

    def map(self, fn, tasks):
        return _in_task_order(self, fn, tasks)

    def close(self):
        pool, self._pool = self._pool, []
        self._queue.clear()
        self._done.clear()
        for worker in pool:
            worker.stop(timeout=0 if worker.task is not None else 1.0)


def _answer_probe(path: str, token: str, node: str) -> str:
    """On one Ray node: read the driver's probe file and write an answer beside it."""
    from pathlib import Path

    try:
        if Path(path).read_text() != token:
            return "another file is at the run folder's path there"
        Path(f"{path}.{node}").write_text(token)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return "ok"


def _call_with_threads(fn, task, threads):
    """A Ray task: ``fn(task)`` with ``threads`` torch threads and, as in a process worker, Ctrl-C left to
    the driver (which ends the workers), so a ``KeyboardInterrupt`` in the task is a component's and
    fails its stage rather than cancelling the task."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the worker's main thread: nothing to change there
        pass
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
        self._remote = None
        self._pending: list = []

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise UserError('the ray executor needs Ray: pip install "xaibench[ray]"') from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def check(self):
        self._ray()

    def check_folder(self, folder) -> None:
        """Every node of the cluster must see the run folder at the same path (stage artifacts are written
        there by whichever node runs the stage): each node reads a file the driver wrote and writes one the
        driver reads. A node that cannot is a ``UserError`` naming it and what to set up."""
        import uuid
        from pathlib import Path

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray()
        folder = Path(folder).resolve()
        token = uuid.uuid4().hex
        probe = folder / f".xaibench-probe-{token}"
        probe.write_text(token)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        try:
            remote = ray.remote(num_cpus=0)(_answer_probe)
            answers = ray.get([remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                               .remote(str(probe), token, n["NodeID"]) for n in nodes])
            blind = [f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]}: {answer})" for n, answer in zip(nodes, answers)
                     if answer != "ok" or not Path(f"{probe}.{n['NodeID']}").is_file()]
        finally:
            for path in folder.glob(f".xaibench-probe-{token}*"):
                path.unlink(missing_ok=True)
        if blind:
            raise UserError(
                f"the run folder {folder} is not shared with {len(blind)} of the {len(nodes)} Ray nodes: "
                f"{'; '.join(blind)}. Every node writes the stages it runs into the run folder, so it must see the "
                f"folder at the same path: put --out on a filesystem every node mounts there (NFS, a cluster "
                f"volume), or run with another executor")

    @property
    def slots(self) -> int:
        """Tasks the cluster runs at once: its CPUs over the CPUs each task asks for (GPUs likewise)."""
        ray = self._ray()
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // self.cpus)
        if self.gpus:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus))
        return max(1, slots)

    def submit(self, fn, task):
        ray = self._ray()
        if self._remote is None:
            self._remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_call_with_threads)
        ref = self._remote.remote(fn, task, self.threads or max(1, int(self.cpus)))
        self._pending.append(ref)
        return ref

    def next_result(self):
        ray = self._ray()
        (ref,), rest = ray.wait(self._pending, num_returns=1)
        self._pending = rest
        try:
            return ref, ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError,
                ray.exceptions.NodeDiedError) as exc:
            return ref, WorkerLost(f"worker died ({type(exc).__name__}: killed or out of memory?) while running it; "
                                   f"run again with --retry-failed, with fewer tasks per node or a smaller "
                                   f"batch_size")

    def map(self, fn, tasks):
        return _in_task_order(self, fn, tasks)

    def close(self):
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
        self._remote = None
        self._pending = []


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
    register("process", ProcessExecutor)
    register("ray", RayExecutor)
