"""What a user who did not write xaibench meets first: a dry run on a machine without the weights or the
data, seeds and list entries a grid should not take, a run folder that lost its store, an
``XAIBENCH_DATA`` that is a file, and a terminal that cannot show α or †. All through the command line."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from xaibench.commands.cli import main

TINY = """\
datasets: [{name: synthetic, n_train: 8, n_val: 4, n_test: 4, image_size: 32}]
backbones: [{name: resnet18, weights: none}]
train: {epochs: 1, batch_size: 8}
"""

WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to reach the network is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("a test tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run of one tiny training (a few seconds on a CPU)."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "grid.yaml").write_text(TINY)
    assert main(["run", "--grid", str(folder / "grid.yaml"), "--out", str(folder / "out"), "--quiet"]) == 0
    return folder / "out"


# -- a dry run fetches nothing ---------------------------------------------------------------------------

LOOP_PARTS = """\
masks: [blur]
ensembles: [{name: logit-mix, alpha: 0.0}]
explainers: [gradcam]
seeders: [{name: top-k, k: 3}]
segmenters: [random-walker]
loop: {rounds: 1}
"""


@pytest.mark.parametrize("command", ["run", "loop"])
def test_a_dry_run_downloads_nothing_and_says_what_a_real_run_would_fetch(
        command, registry, tmp_path, monkeypatch, capsys, no_network, write_grid):
    torch_home, data = tmp_path / "torch", tmp_path / "data"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    grid = write_grid(f"""\
        datasets: [{{name: kahikatea, download: true, root: {data / 'kahikatea'}, image_size: 32}}]
        backbones: [{{name: resnet18, weights: imagenet}}]
        """ + LOOP_PARTS.replace("\n", "\n        "))
    assert main([command, "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert no_network == []
    assert list(torch_home.rglob("*")) == [] and not data.exists() and not (tmp_path / "out").exists()
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"not cached at {cached}; a real run downloads them from {WEIGHTS_URL}" in out
    assert f"the kahikatea dataset is not at {data / 'kahikatea'}; a real run downloads it" in out


def test_a_dry_run_with_the_weights_cached_has_nothing_to_fetch(registry, tmp_path, monkeypatch, capsys,
                                                                no_network, write_grid):
    torch_home = tmp_path / "torch"
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")  # a dry run looks, it does not load
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    grid = write_grid(TINY.replace("weights: none", "weights: imagenet"))
    assert main(["run", "--grid", str(grid), "--dry-run"]) == 0
    assert "not fetched" not in capsys.readouterr().out
    assert no_network == []


def test_a_dry_run_that_cannot_start_lists_the_missing_weights_with_the_missing_data(
        registry, tmp_path, monkeypatch, capsys, no_network, write_grid):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    grid = write_grid(f"""\
        datasets: [{{name: kahikatea, root: {tmp_path / 'none'}, image_size: 32}}]
        backbones: [{{name: resnet18, weights: imagenet}}]
        """)
    assert main(["run", "--grid", str(grid), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot start the run:")
    assert "xaibench data fetch kahikatea" in err and f"not fetched by a dry run: backbone" in err
    assert no_network == [] and not (tmp_path / "torch").exists()


# -- grid validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, code", [(2**32 - 1, 0), (2**32, 2), (2**64, 2)])
def test_seeds_are_bounded_where_the_grid_is_read(seed, code, registry, capsys, write_grid):
    grid = write_grid(f"seeds: [0, {seed}]\n" + TINY)
    assert main(["run", "--grid", str(grid), "--dry-run"]) == code
    err = capsys.readouterr().err
    if code:
        assert err.startswith("error: invalid grid:") and f"{grid}:1:" in err and "seeds[1]" in err
        assert "4294967295" in err and "Traceback" not in err


@pytest.mark.parametrize("masks, first, repeat", [
    ("[{name: blur, sigma: 2}, white, {name: blur, sigma: 2.0}]", "masks[0]", "masks[2]"),  # int and float
    ("[blur, {name: blur, sigma: 4.0}]", "masks[0]", "masks[1]"),  # the default written out
    ("[{name: blur, sigma: 1}, {name: blur, sweep: {sigma: [2, 1.0]}}]", "masks[0]", "masks[1]"),  # a sweep point
])
def test_two_list_entries_of_one_configuration_are_refused(masks, first, repeat, registry, capsys, write_grid):
    grid = write_grid(TINY + f"masks: {masks}\nensembles: [logit-mix]\n")
    assert main(["run", "--grid", str(grid), "--dry-run"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: invalid grid:" and len(lines) == 2
    assert lines[1].strip().startswith(f"{grid}:4:") and f"{repeat}: " in lines[1]
    assert f"is the same configuration as {first}" in lines[1]


def test_the_same_parameters_in_another_order_are_one_configuration(registry, capsys, write_grid):
    grid = write_grid(TINY + "masks: [white]\nensembles: [logit-mix]\nexplainers: [gradcam]\n"
                      "seeders: [{name: top-k, k: 3, min_distance: 12}, {min_distance: 12, k: 3, name: top-k}]\n")
    assert main(["run", "--grid", str(grid), "--dry-run"]) == 2
    assert "seeders[1]: top-k(k=3,min_distance=12) is the same configuration as seeders[0]" in capsys.readouterr().err
    distinct = write_grid(TINY + "masks: [white]\nensembles: [logit-mix]\nexplainers: [gradcam]\n"
                          "seeders: [{name: top-k, k: 3}, {name: top-k, k: 4}]\n", name="distinct.yaml")
    assert main(["run", "--grid", str(distinct), "--dry-run"]) == 0


# -- a run folder that lost its store -------------------------------------------------------------------

def test_a_folder_that_lost_its_store_points_at_rebuild_store_which_recovers_it(finished_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    (out / "store.sqlite").unlink()
    grid = str(finished_run.parent / "grid.yaml")
    capsys.readouterr()
    assert main(["run", "--grid", grid, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "no store.sqlite" in err and "--rebuild-store" in err
    assert not (out / "store.sqlite").exists()
    assert main(["run", "--grid", grid, "--out", str(out), "--quiet", "--rebuild-store"]) == 0
    assert "cells: 1 done, 0 failed of 1; trainings: 0 run, 1 reused" in capsys.readouterr().out
    assert (out / "store.sqlite").is_file()


# -- the environment ------------------------------------------------------------------------------------

@pytest.mark.parametrize("inside", [False, True])
def test_xaibench_data_naming_a_file_is_one_error_line(inside, registry, tmp_path, monkeypatch, capsys, write_grid):
    afile = tmp_path / "data.txt"
    afile.write_text("not a folder")
    monkeypatch.setenv("XAIBENCH_DATA", str(afile / "sub" if inside else afile))
    assert main(["data", "info", "kahikatea"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: XAIBENCH_DATA=") and len(err.strip().splitlines()) == 1
    assert "not a folder" in err
    grid = write_grid("datasets: [{name: kahikatea, image_size: 32}]\nbackbones: [resnet18]\n")
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "XAIBENCH_DATA=" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _ascii_xaibench(*args, cwd):
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    return subprocess.run([sys.executable, "-m", "xaibench.commands.cli", *args], capture_output=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args", [["leaderboard", "{run}"], ["plugins", "masks", "blur"], ["loop", "--help"]])
def test_a_terminal_that_cannot_show_alpha_or_dagger_gets_escapes_not_a_traceback(args, finished_run, tmp_path):
    done = _ascii_xaibench(*[a.format(run=finished_run) for a in args], cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    text = done.stdout.decode("ascii")  # nothing but ASCII came out
    assert "\\u" in text  # α, †, — or → as an escape: the reader still sees one was there
    if args[0] == "leaderboard":
        assert "\\u2020 marks a configuration missing some seeds" in text
