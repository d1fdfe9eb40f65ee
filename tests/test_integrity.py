"""Nothing is silently wrong or silently lost: damaged artifacts are detected and recomputed, a damaged
store is one error line and can be rebuilt, and unusable output folders and full disks are refused or
reported cleanly. Every case goes through the CLI."""

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from xaibench.commands.cli import main

GRID = """\
name: integrity
seeds: [0]
datasets: [{name: blobs, n: 12}]
backbones: [resnet18]
masks: [white]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [gradcam]
seeders: [{name: top-k, k: 1, min_distance: 4}]
segmenters: [cam-threshold]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


@pytest.fixture
def run(registry, blobs, write_grid, tmp_path, capsys):
    grid = write_grid(GRID)

    def go(*extra, out=None, text=None):
        path = write_grid(text) if text else grid
        out = Path(out) if out else tmp_path / "run"
        code = main(["run", "--grid", str(path), "--out", str(out), "--quiet", *extra])
        printed = capsys.readouterr()
        info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else None
        return code, info, printed

    return go


def _first(folder, pattern):
    return sorted(folder.glob(pattern))[0]


@pytest.mark.parametrize("damage, target, what", [
    ("truncate", "cache/logits/*.npz", "stage"),
    ("garbage", "cache/explain/*/maps.npy", "stage"),
    ("truncate", "cache/data/*.train/images.npy", "stage"),
    ("delete", "cache/seeds/*.npz", "stage"),
    ("truncate", "cache/models/*.safetensors", "stage"),
    ("truncate", "cells/*.npz", "cell"),
])
def test_a_damaged_artifact_is_named_recomputed_and_the_results_are_unchanged(run, tmp_path, damage, target, what):
    code, first, _ = run()
    assert code == 0
    before = (tmp_path / "run" / "leaderboard.csv").read_bytes()
    path = _first(tmp_path / "run", target)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))  # same size, other content
    else:
        path.unlink()
    code, again, printed = run()
    assert code == 0, printed.err
    assert f"warning: {path} cannot be reused" in printed.err and printed.err.count("cannot be reused") == 1
    assert "Traceback" not in printed.err
    if what == "stage":
        assert again["stages_run"] == 1 and again["stages_reused"] == first["stages_run"] - 1
    else:
        assert again["stages_run"] == 0
    assert (tmp_path / "run" / "leaderboard.csv").read_bytes() == before
    assert path.is_file()


def test_garbage_in_the_figure_index_redraws_the_figures(run, tmp_path):
    assert run()[0] == 0
    (tmp_path / "run" / "figures" / "index.json").write_text("{not json")
    code, info, printed = run()
    assert code == 0 and "Traceback" not in printed.err and len(info["figures"]) == 3


def test_a_damaged_store_is_one_error_line_and_rebuild_store_recovers_it(run, tmp_path):
    code, first, _ = run()
    assert code == 0
    before = (tmp_path / "run" / "leaderboard.csv").read_bytes()
    store = tmp_path / "run" / "store.sqlite"
    store.write_bytes(b"this is not a database" * 100)
    code, _, printed = run()
    assert code == 2
    assert printed.err.startswith("error: ") and printed.err.count("\n") == 1
    assert "is not a readable SQLite database" in printed.err and "--rebuild-store" in printed.err
    assert main(["leaderboard", str(tmp_path / "run")]) == 2  # the same message for the leaderboard
    code, rebuilt, printed = run("--rebuild-store")
    assert code == 0, printed.err
    assert "moved to store.sqlite.unreadable-" in printed.err
    assert rebuilt["trainings_run"] == 0 and rebuilt["stages_run"] == 0
    assert rebuilt["stages_reused"] == first["stages_run"]
    assert (tmp_path / "run" / "leaderboard.csv").read_bytes() == before
    assert list((tmp_path / "run").glob("store.sqlite.unreadable-*"))


def test_rebuild_store_recomputes_what_the_artifacts_do_not_hold(run, tmp_path):
    code, first, _ = run()
    assert code == 0
    (tmp_path / "run" / "store.sqlite").unlink()
    _first(tmp_path / "run", "cache/segment/*.npz").write_bytes(b"PK\x03\x04 truncated")
    code, rebuilt, printed = run("--rebuild-store")
    assert code == 0, printed.err
    assert rebuilt["stages_run"] == 1 and rebuilt["trainings_run"] == 0


# -- output folders ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _mounted(folder, options):
    """A tmpfs mounted at ``folder`` with ``options`` (root only); skips the test where mounting is not
    allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("a file"), "is a file, not a folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "holds files but no xaibench run"),
])
def test_an_unusable_output_folder_is_refused_before_anything_is_written(run, tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, printed = run(out=out)
    assert code == 2 and printed.err.startswith("error: --out ") and message in printed.err
    assert printed.err.count("\n") == 1 and sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("where, message", [("/", "is the root of the filesystem"), ("~", "is your home folder")])
def test_the_root_and_the_home_folder_are_refused(run, where, message):
    code, _, printed = run(out=os.path.expanduser(where))
    assert code == 2 and message in printed.err


def test_a_read_only_filesystem_is_refused(run, tmp_path):
    with _mounted(tmp_path / "ro", "ro,size=1m") as folder:
        code, _, printed = run(out=folder / "run")
        assert code == 2 and "cannot be written" in printed.err and "Read-only file system" in printed.err


def test_an_unwritable_folder_is_refused(run, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:  # permissions do not bind root: make the folder immutable instead
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
    else:
        folder.chmod(0o555)
    try:
        code, _, printed = run(out=folder / "run")
        assert code == 2 and "cannot be written" in printed.err
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_a_full_disk_fails_the_stage_with_the_free_space_and_the_next_run_goes_on(run, tmp_path):
    with _mounted(tmp_path / f"small-{uuid.uuid4().hex[:6]}", "size=3m") as folder:
        code, info, printed = run(out=folder / "run")
        assert code == 1 and "Traceback" not in printed.out + printed.err
        (failure,) = info["failures"]
        assert failure["stage"].startswith("train resnet18")
        assert f"no space left on the device of {folder / 'run'} (" in failure["message"]
        assert "bytes free" in failure["message"] and "this stage is retried" in failure["message"]
        assert "no space left on the device" in printed.out
        shutil.copytree(folder / "run", tmp_path / "moved")  # "freeing space": the same run, elsewhere
    code, again, printed = run(out=tmp_path / "moved")
    assert code == 0 and again["trainings_run"] == 2 and again["cells_failed"] == 0  # retried without a flag
    assert pd.read_csv(tmp_path / "moved" / "leaderboard.csv")["status"].eq("done").all()


# -- weight files ------------------------------------------------------------------------------------------


def _weights(tmp_path, kind):
    """A weights file of each unusable kind."""
    import pickle
    import struct

    import torch
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "folder":
        path.mkdir()
        return path
    good = tmp_path / "good.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(good))
    data = {"truncated": good.read_bytes()[:200], "empty": b"", "garbage": os.urandom(4000),
            "huge-header": struct.pack("<Q", 2**62) + b"{}", "pickle": pickle.dumps({"conv1.weight": [0.0]})}
    if kind == "foreign":
        save_file({"some.other.weight": torch.zeros(3)}, str(path))
    else:
        path.write_bytes(data[kind])
    return path


@pytest.mark.parametrize("kind, problem", [
    ("folder", "is a folder, not a file"),
    ("truncated", "is not a readable safetensors file"),
    ("empty", "is not a readable safetensors file"),
    ("garbage", "is not a readable safetensors file"),
    ("huge-header", "is not a readable safetensors file"),
    ("pickle", "is not a readable safetensors file"),
    ("foreign", "do not fit resnet18"),
])
def test_an_unusable_weights_file_is_one_error_line_naming_it(run, tmp_path, kind, problem):
    path = _weights(tmp_path, kind)
    code, _, printed = run(text=GRID.replace("backbones: [resnet18]", f"backbones: [{{name: resnet18, weights: {path}}}]"))
    assert code == 2 and "Traceback" not in printed.err
    assert printed.err.startswith("error: cannot start the run:") and str(path) in printed.err and problem in printed.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, problem", [
    ("folder", "is a folder, not a file"),
    ("truncated", "cannot be read as tensors"),
    ("garbage", "cannot be read as tensors"),
    ("pickle-of-code", "cannot be read as tensors"),
    ("foreign", "holds no Segment Anything image encoder"),
    ("wrong-size", "is a SAM vit_l model, not a SAM vit_b model (model_type 'vit_b'); set model_type to 'vit_l'"),
])
def test_an_unusable_sam_checkpoint_is_one_error_line_naming_it(run, tmp_path, kind, problem):
    import torch

    path = tmp_path / "sam.pth"
    if kind == "folder":
        path.mkdir()
    elif kind == "foreign":
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    elif kind == "wrong-size":
        torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, path)
    elif kind == "pickle-of-code":
        path.write_bytes(b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.")
    else:
        torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
        path.write_bytes(path.read_bytes()[:100] if kind == "truncated" else os.urandom(2000))
    grid = GRID.replace("segmenters: [cam-threshold]", f"segmenters: [{{name: sam, checkpoint: {path}}}]")
    code, _, printed = run(text=grid)
    assert code == 2 and "Traceback" not in printed.err
    assert str(path) in printed.err and problem in printed.err and printed.err.count("\n") <= 2


# -- executors ---------------------------------------------------------------------------------------------


def test_a_process_worker_that_dies_fails_its_task_only_and_is_replaced(registry):
    from tests.worker_tasks import square_or_die
    from xaibench.errors import WorkerLost

    executor = registry.create("executors", "process", workers=2, threads=1)
    try:
        results = list(executor.map(square_or_die, [2, 13, 3, 4]))
        assert results[0] == 4 and results[2:] == [9, 16]
        assert isinstance(results[1], WorkerLost) and "worker died (signal 9: killed or out of memory?)" in str(
            results[1])
        assert list(executor.map(square_or_die, [5, 6])) == [25, 36]  # the pool was restarted
    finally:
        executor.close()


def _worker_pids():
    """The spawned worker processes of this (test) process."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_its_stage_and_the_run_reports_it(run, tmp_path):
    import signal
    import threading
    import time

    # worker processes load installed plugins only: the synthetic dataset, not the tests' blobs
    grid = GRID.replace("{name: blobs, n: 12}", "{name: synthetic, n_train: 48, n_val: 0, n_test: 16, image_size: 32}") \
        .replace("train: {epochs: 1", "train: {epochs: 30, checkpoint_seconds: 0") + \
        "executor: {name: process, workers: 2, threads: 1}\n"
    killed = []

    def kill_a_training_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            checkpoints = list((tmp_path / "run" / "cache" / "checkpoints").glob("*.pt"))
            pids = _worker_pids()
            if checkpoints and pids:  # the training has run an epoch in some worker
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_training_worker)
    killer.start()
    code, info, printed = run(text=grid)
    killer.join()
    assert killed and code == 1 and "Traceback" not in printed.err
    (failure,) = info["failures"]
    assert failure["stage"].startswith("train resnet18") and "worker died" in failure["message"]
    assert failure["component"].startswith("backbone 'resnet18'")  # what the worker was running, not the executor
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "leaderboard.md").is_file()
