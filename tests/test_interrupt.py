"""A run killed with SIGKILL and started again finishes with the results of an uninterrupted run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from test_run import GRID


def _done_stages(out):
    db = out / "store.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM stages WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _command(grid, out):
    return [sys.executable, "-m", "xaibench.commands.cli", "run", "--grid", str(grid), "--out", str(out), "--quiet"]


def _run_here(grid, out):
    """The uninterrupted reference run, in this process: the same results as a run of its own (the
    executor tests compare bytes across processes too), without another start-up of torch."""
    from xaibench.commands.cli import main

    assert main(_command(grid, out)[3:]) == 0


def _kill_after(grid, out, stages, limit=120):
    process = subprocess.Popen(_command(grid, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + limit
    while process.poll() is None and _done_stages(out) < stages and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return _done_stages(out)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_results_and_redoes_nothing(tiny_reference, write_grid, tmp_path):
    grid = write_grid(GRID)
    reference = tiny_reference

    out = tmp_path / "interrupted"
    finished = 0
    for stages in (2, 6):  # mid-trainings, mid-explanations
        finished = _kill_after(grid, out, stages)
        assert not (out / "run.json").exists()
    subprocess.run(_command(grid, out), check=True, capture_output=True)
    import json

    summary = json.loads((out / "run.json").read_text())
    assert summary["stages_reused"] >= finished and summary["cells_failed"] == 0
    assert (out / "leaderboard.csv").read_bytes() == (reference / "leaderboard.csv").read_bytes()


# a tiny network, and epochs enough (about 0.2 s each here) that a kill after the first checkpoint lands
# mid-training
TRAINING_GRID = """\
name: long-training
seeds: [0]
datasets: [{name: synthetic, n_train: 96, n_val: 0, n_test: 16, image_size: 32}]
backbones: [{name: timm, params: {name: test_resnet}}]
train: {epochs: 8, batch_size: 16, checkpoint_seconds: 0}
"""


@pytest.mark.slow
def test_a_training_killed_mid_way_resumes_from_its_last_epoch_and_ends_identical(registry, write_grid, tmp_path):
    import json

    grid = write_grid(TRAINING_GRID)
    reference = tmp_path / "reference"
    _run_here(grid, reference)

    out = tmp_path / "interrupted"
    process = subprocess.Popen(_command(grid, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and not list((out / "cache" / "checkpoints").glob("*.pt")) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    subprocess.run(_command(grid, out), check=True, capture_output=True)
    with sqlite3.connect(out / "store.sqlite") as db:
        (meta,) = db.execute("SELECT meta FROM stages WHERE kind = 'train'").fetchone()
    assert json.loads(meta)["resumed_from_epoch"] >= 1
    assert not list((out / "cache" / "checkpoints").glob("*"))  # removed once the training finished
    model = next((out / "cache" / "models").glob("*.safetensors")).read_bytes()
    assert model == next((reference / "cache" / "models").glob("*.safetensors")).read_bytes()
    assert (out / "leaderboard.csv").read_bytes() == (reference / "leaderboard.csv").read_bytes()


@pytest.mark.slow
def test_ctrl_c_stops_removes_the_lock_keeps_the_epoch_and_says_how_to_resume(write_grid, tmp_path):
    grid = write_grid(TRAINING_GRID.replace("epochs: 8", "epochs: 50"))
    out = tmp_path / "run"
    command = [sys.executable, "-c", "from xaibench.commands.cli import entry; entry()", *_command(grid, out)[3:]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and not list((out / "cache" / "checkpoints").glob("*.pt")) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (out / ".lock").is_file()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)  # a guard against a hang, not a speed claim
    assert process.returncode == 130
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err
    assert not (out / ".lock").exists()
    assert list((out / "cache" / "checkpoints").glob("*.pt"))  # the finished epochs are kept


def test_a_refused_second_run_leaves_the_owners_lock_alone(registry, blobs, write_grid, tmp_path, capsys):
    from xaibench.commands.cli import main
    from xaibench.pipeline.store import RunLock

    out = tmp_path / "run"
    out.mkdir()
    owner = RunLock(out)
    owner.acquire()
    try:
        before = (out / ".lock").read_text()
        grid = write_grid("datasets: [blobs]\nbackbones: [resnet18]\n")
        assert main(["run", "--grid", str(grid), "--out", str(out), "--quiet"]) == 2
        assert f"another xaibench run (process {os.getpid()}) is using" in capsys.readouterr().err
        assert (out / ".lock").read_text() == before == str(os.getpid())
    finally:
        owner.release()
    assert not (out / ".lock").exists()
