"""benchmarks/gpu.py, the one script a lent GPU runs, at toy size on the CPU: every part runs and writes
its numbers, a failing part leaves the others' numbers, and the time budget is kept, so the script is
known to work before an accelerator is available."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("xaibench_gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_part_runs_at_smoke_size_and_writes_its_numbers(gpu, tmp_path, registry):
    result = gpu.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for part in gpu.PARTS:
        assert part in saved and "error" not in saved[part], (part, saved.get(part))
    assert saved["environment"]["device"] == "cpu"
    assert saved["cuda_tests"]["skipped"] == "no CUDA device"
    row = saved["training"]["fp32_channels_last"]  # the one mode of a smoke run
    assert row["xaibench_images_per_s"] > 0 and row["plain_images_per_s"] > 0 and row["xaibench_over_plain"] > 0
    assert saved["cam"]["gradcam_over_forward"] > 0 and saved["sam"]["embeddings_per_s"] > 0
    assert saved["quickstart"]["exit_code"] == 0  # planned only (--dry-run) at smoke size
    for task in ("paper_binary", "paper_multiclass"):
        run = saved[task]
        assert run["exit_code"] == 0 and {"train", "finetune", "explain", "segment"} <= set(run["stages"])
        assert run["three_seeds_estimate_s"] == pytest.approx(3 * run["stage_seconds"], abs=0.11)
    text = (tmp_path / "gpu.txt").read_text()
    assert "smoke run, numbers mean nothing" in text and "Grad-CAM:" in text and "paper_multiclass:" in text


def test_a_failing_part_keeps_the_others_and_the_budget_stops_new_parts(gpu, tmp_path, monkeypatch):
    def broken(device, size, folder):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu.PARTS, "cam", broken)
    result = gpu.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--only", "cam,sam"])
    assert result["cam"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert result["sam"]["embeddings_per_s"] > 0 and result["environment"]["device"] == "cpu"
    assert "cam: RuntimeError: CUDA error" in (tmp_path / "gpu.txt").read_text()
    late = gpu.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "late"), "--only", "sam",
                     "--budget", "0"])
    assert late["sam"]["skipped"].startswith("the budget of 0 s was spent")
    with pytest.raises(SystemExit):
        gpu.main(["--only", "warp-drive"])
