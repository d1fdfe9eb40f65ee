"""The machine a run's numbers come from.

Float results of the same run differ between CPU types: PyTorch picks its kernels by the instruction set it
finds (AVX-512, AVX2, ...), and oneDNN's convolutions sum in another order on each, so a model trained from
the same seed ends in other weights. A table is therefore a measurement on one machine, and says which.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Environment variables that limit the instruction set PyTorch and its libraries use on the CPU.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    """The CPU's model name as the operating system reports it (``/proc/cpuinfo`` on Linux), else
    ``platform.processor()``, else ``"unknown CPU"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip() or "unknown CPU"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> dict:
    """``python``, ``torch`` (their versions), ``platform``, ``cpu_count``, ``cpu`` (model name), ``cpu_isa``
    (the instruction set PyTorch's CPU kernels run with, e.g. ``AVX2``) and ``isa_limits`` (the variables of
    ``ISA_LIMITS`` set in this process), for ``run.json`` and ``loop.json``."""
    import torch

    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu": cpu_model(), "cpu_isa": str(capability),
            "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ}}


def sentence(infos: list[dict]) -> str | None:
    """One sentence naming the machines (CPU, instruction set, device, torch) the runs in ``infos`` (their
    ``run.json`` contents) were computed on, and that another CPU moves the numbers; None when no run says."""
    machines = []
    for info in infos:
        if not isinstance(info, dict) or "cpu" not in info:
            continue
        limits = info.get("isa_limits") or {}
        isa = str(info.get("cpu_isa", "?")) + (f", limited by {', '.join(f'{k}={v}' for k, v in limits.items())}"
                                               if limits else "")
        text = f"{info['cpu']} ({isa}), {info.get('cpu_count', '?')} cores, device {info.get('device', '?')}, " \
               f"torch {info.get('torch', '?')}"
        if text not in machines:
            machines.append(text)
    if not machines:
        return None
    return (f"Computed on {'; '.join(machines)}. These numbers are for that machine: float kernels differ "
            "between CPU types and instruction sets, so the same grid on another CPU trains slightly different "
            "models and moves accuracies by a few points (README, \"Numbers from one machine\").")
