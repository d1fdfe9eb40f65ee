"""Timing the units of a cost estimate (``xaibench.pipeline.estimate``) on this machine, for a dry run.

A forward pass of the grid's first backbone, built untrained (``stages.build_untrained``: no weights are
read or fetched), on a small batch of random images at its first dataset's image size, on the device the
run would use, best of two; and, where the grid measures faithfulness, ROAD's imputation
(``faithfulness.impute``) at its percentiles. It runs in a child process (``calibrate``), so a dry run
imports no torch itself, a backbone that crashes or hangs costs the estimate its seconds only, and the
network is closed to it: what cannot be built offline is reported, not fetched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

from xaibench.kit.contracts import Bands, capability, validate_model
from xaibench.kit.registry import get_registry
from xaibench.pipeline import faithfulness
from xaibench.pipeline.estimate import Rates, split_sizes
from xaibench.pipeline.grid import Choice, Grid, all_choices
from xaibench.pipeline.stages import build_untrained
from xaibench.pipeline.training import resolve_device

# Images per timed batch on a CPU; a GPU is timed at the grid's eval batch size (a batch of 8 would time
# its launch latency, not its throughput).
CPU_BATCH = 8
# At most this many of ROAD's percentiles are timed (evenly spaced), each once, within SOLVE_BUDGET_S.
SOLVE_SAMPLES = 9
SOLVE_BUDGET_S = 3.0
# A pass slower than this is timed once, not twice.
SLOW_PASS_S = 3.0
# The child process is stopped after this long; the estimate is then given in units only.
TIMEOUT_S = 30.0
# A 1-minute load average above this per CPU before timing: the seconds are marked as maybe overstated.
BUSY_LOAD = 0.75
# The child process: reads a Request on stdin, answers on stdout (``main``).
CHILD = [sys.executable, "-m", "xaibench.pipeline.calibration"]
MARKER = "xaibench-calibration: "  # the child's answer line (a plugin may print to stdout too)


@dataclasses.dataclass(frozen=True)
class Request:
    """What to time: ``backbone`` built for ``dataset``'s classes and bands, on ``batch`` images (``gpu_batch``
    on a GPU) of ``image_size`` pixels on ``device`` (a grid's device: auto, cpu, cuda...), and ROAD's
    imputation at the percentiles of ``steps`` (0: none)."""

    backbone: Choice
    dataset: Choice
    image_size: int
    device: str
    steps: int
    batch: int
    gpu_batch: int

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({**fields, "backbone": self.backbone.ident, "dataset": self.dataset.ident}, default=str)

    @classmethod
    def from_json(cls, text: str) -> "Request":
        data = json.loads(text)
        return cls(**{**data, "backbone": Choice(**data["backbone"]), "dataset": Choice(**data["dataset"])})


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The rates timed, or None and one line saying why not (``problem``); ``busy``: a note where other
    work shared the machine while timing."""

    rates: Rates | None
    problem: str = ""
    busy: str = ""


def request_for(grid: Grid, registry, *, faithfulness_planned: bool) -> Request | str:
    """The ``Request`` of a grid (its first backbone, at its first dataset's image size), or one line saying
    why it cannot be timed."""
    backbone, dataset = all_choices(grid.backbones)[0], all_choices(grid.datasets)[0]
    size = split_sizes(dataset, registry).image_size
    if size is None:
        return f"the image size of dataset {dataset.label} is not a grid parameter (image_size)"
    steps = grid.protocol.faithfulness_steps if faithfulness_planned else 0
    return Request(backbone, dataset, size, grid.device, steps, CPU_BATCH, grid.protocol.eval_batch_size)


def calibrate(request: Request, *, timeout: float | None = None) -> Calibration:
    """Time ``request`` in a child process (``CHILD``, at most ``timeout`` seconds, default ``TIMEOUT_S``);
    never raises: whatever goes wrong there is the ``problem`` of a ``Calibration`` without rates."""
    timeout = TIMEOUT_S if timeout is None else timeout
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load = busy()
    try:
        done = subprocess.run(CHILD, input=request.to_json(), capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return Calibration(None, f"timing {request.backbone.label} took over {timeout:.0f} s; stopped")
    except OSError as exc:
        return Calibration(None, f"the timing process could not start ({exc})")
    answers = [line[len(MARKER):] for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not answers:
        last = (done.stderr.strip().splitlines() or [""])[-1][:200]
        return Calibration(None, f"the timing process ended with code {done.returncode}"
                                 + (f": {last}" if last else ""))
    answer = json.loads(answers[-1])
    if answer.get("problem"):
        return Calibration(None, answer["problem"])
    return Calibration(Rates(**answer["rates"]), busy=load)


def busy() -> str:
    """A note when this machine is busy before the timing starts (the 1-minute load average above
    ``BUSY_LOAD`` per CPU): the passes timed then are slower than they will be on a quiet machine."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):  # no load average here (Windows)
        return ""
    if load <= BUSY_LOAD * cpus:
        return ""
    return (f"this machine was busy while timing (load {load:.1f} on {cpus} CPU{'s' if cpus > 1 else ''}), so the "
            f"seconds may be overstated; dry-run again when it is quiet")


def measure(request: Request, registry) -> Rates:
    """Time ``request`` in this process (what the child process of ``calibrate`` runs). Raises what
    building or running the backbone raises."""
    import torch

    device = resolve_device(request.device, what="device")
    backbone = registry.create("backbones", request.backbone.name, **request.backbone.params)
    if not capability(backbone, "pretrained", "backbones"):
        raise ValueError(f"backbone {request.backbone.label}: its build() takes no 'pretrained' keyword, so building "
                         f"it may load or fetch weights")
    dataset = registry.create("datasets", request.dataset.name, **request.dataset.params)
    bands = capability(dataset, "image_bands", "datasets") or Bands.rgb3()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_untrained(backbone, len(dataset.classes), bands)
    validate_model(model)
    model = model.to(device).eval()
    batch = request.batch if device == "cpu" else request.gpu_batch
    images = torch.rand(batch, bands.count, request.image_size, request.image_size, device=device)
    times = []
    with torch.no_grad():
        model(images[:1] if device == "cpu" else images)  # one-time set-up (kernels, allocations, autotuning)
        _synchronize(device)
        for _ in range(2):
            start = time.perf_counter()
            model(images)
            _synchronize(device)
            times.append(time.perf_counter() - start)
            if times[-1] > SLOW_PASS_S:
                break
    solve_s = time_solves(request.image_size, request.steps) if request.steps else None
    return Rates(device, min(times) / batch, solve_s,
                 f"{request.backbone.label} at {request.image_size} px, batch {batch}")


def _synchronize(device: str) -> None:
    """Wait for the work queued on ``device`` (a GPU runs asynchronously: a pass is timed once it is done)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device == "mps":
        torch.mps.synchronize()


def time_solves(size: int, steps: int) -> float:
    """Mean seconds of one ROAD imputation of a 3-band ``size`` px image at the percentiles of ``steps``
    (at most ``SOLVE_SAMPLES`` of them, within ``SOLVE_BUDGET_S``), removing the most and the least
    relevant pixels of a smooth map (an explanation's) in turn."""
    import torch

    rows, cols = np.mgrid[:size, :size]
    saliency = np.exp(-((rows - 0.4 * size) ** 2 + (cols - 0.55 * size) ** 2) / (0.1 * size * size)).astype(np.float32)
    image = torch.rand(3, size, size)
    faithfulness.impute(image[:, :8, :8], saliency[:8, :8] < 0.5)  # imports scipy: not a solve's cost
    percentiles = faithfulness.road_percentiles(steps)
    chosen = np.unique(np.linspace(0, len(percentiles) - 1, min(SOLVE_SAMPLES, len(percentiles))).round().astype(int))
    times: list[float] = []
    started = time.perf_counter()
    for i, index in enumerate(chosen):
        relevance = saliency if i % 2 == 0 else 1 - saliency
        start = time.perf_counter()
        faithfulness.impute(image, relevance < np.percentile(relevance, percentiles[index]))
        times.append(time.perf_counter() - start)
        if time.perf_counter() - started > SOLVE_BUDGET_S:
            break
    return float(np.mean(times))


def _refuse_network(*args, **kwargs):
    raise OSError("the network is closed to a dry run's timing")


def main() -> int:
    """The child process: a ``Request`` as JSON on stdin; one ``MARKER`` line of JSON on stdout, with the
    rates or the problem."""
    socket.socket.connect = _refuse_network
    socket.create_connection = _refuse_network
    request = Request.from_json(sys.stdin.read())
    try:
        answer = {"rates": dataclasses.asdict(measure(request, get_registry()))}
    except Exception as exc:  # whatever a backbone raises is the estimate's one line, not a traceback
        first = (str(exc).splitlines() or [""])[0]
        answer = {"problem": f"{request.backbone.label}: {type(exc).__name__}: {first}"[:300]}
    print(MARKER + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
