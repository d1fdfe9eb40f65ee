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
    return [sys.executable, "-m", "xaibench.cli", "run", "--grid", str(grid), "--out", str(out), "--quiet"]


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
def test_sigkill_then_resume_gives_identical_results_and_redoes_nothing(write_grid, tmp_path):
    grid = write_grid(GRID)
    reference = tmp_path / "reference"
    subprocess.run(_command(grid, reference), check=True, capture_output=True)

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
