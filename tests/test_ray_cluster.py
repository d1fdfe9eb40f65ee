"""A Ray cluster whose nodes share no disk stops a run at once, saying what to set up.

A two-node Ray cluster on this machine: the head in the test's mount namespace, the worker node in a
namespace of its own (``unshare -m``, root only) where a tmpfs hides the run folder, as on a cluster
without shared storage."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAY = Path(sys.executable).with_name("ray")
GRID = """\
name: cluster
datasets: [{name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32}]
backbones: [resnet18]
train: {epochs: 1, batch_size: 8}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    pytest.importorskip("ray")
    if os.geteuid() != 0 or shutil.which("unshare") is None or not RAY.is_file():
        pytest.skip("needs root, unshare and the ray command")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                          env=env, capture_output=True, text=True, timeout=120)
    if head.returncode != 0:
        pytest.skip(f"ray start failed here: {head.stderr[-300:]}")
    hidden = tmp_path / "shared"
    hidden.mkdir()
    worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs tmpfs {hidden} && exec {RAY} start --address={address} --num-cpus=1 "
                               f"--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = subprocess.run([str(RAY), "status", f"--address={address}"], env=env, capture_output=True,
                                    text=True)
            if status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        else:
            pytest.skip("the second Ray node did not join in time")
        yield address, hidden, env
    finally:
        worker.terminate()
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        worker.wait(timeout=60)


@pytest.mark.slow
def test_a_cluster_without_shared_storage_stops_at_once_naming_the_node(cluster, tmp_path):
    address, hidden, env = cluster
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    out = hidden / "run"
    done = subprocess.run([sys.executable, "-m", "xaibench.commands.cli", "run", "--grid", str(grid), "--out", str(out),
                           "--quiet", "--executor", "ray", "--executor-option", f"address={address}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the run folder ") and "is not shared with 1 of the 2 Ray nodes" in error
    assert "FileNotFoundError" in error and "put --out on a filesystem every node mounts there" in error
    assert not out.exists()  # nothing was left behind
