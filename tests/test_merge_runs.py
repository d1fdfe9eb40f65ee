"""``xaibench leaderboard DIR [DIR ...]``: a folder shows the cells of the grid last run in it, and merged
folders pool only cells computed the same way, each cell taken from one folder."""

import io

import pandas as pd
import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main

GRID = """\
name: merge
seeds: [{seed}]
datasets: [{{name: blobs, n: 8}}]
backbones: [tiny]
masks: [{masks}]
ensembles: [{{name: logit-mix, alpha: 0.5}}]
train: {{epochs: {epochs}, batch_size: 8}}
finetune: {{epochs: 1, batch_size: 8}}
"""


class TinyNet:
    """A backbone of one convolution: trains in milliseconds on 32-pixel images."""

    def build(self, num_classes, *, pretrained=True):
        import torch

        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    def target_layers(self, model):
        return [model[0]]


class Tiny:
    @hookimpl
    def register_backbones(self, register):
        register("tiny", TinyNet)


@pytest.fixture
def tiny(registry):
    """The tiny backbone, from a distribution at version 1.0 (``tiny.version("2.0")`` installs another)."""

    def version(number):
        if installed:
            registry.remove_plugin("tiny")
        registry.add_plugin(Tiny(), name="tiny", distribution="xaibench-tiny", version=number)
        installed.append(number)

    installed = []

    version("1.0")
    yield version
    registry.remove_plugin("tiny")


@pytest.fixture
def run(tiny, blobs, tmp_path, capsys):
    def go(folder, *, seed=0, epochs=1, masks="white"):
        grid = tmp_path / f"{folder}.yaml"
        grid.write_text(GRID.format(seed=seed, epochs=epochs, masks=masks))
        code = main(["run", "--grid", str(grid), "--out", str(tmp_path / folder), "--quiet"])
        capsys.readouterr()
        assert code == 0
        return str(tmp_path / folder)

    return go


def leaderboard(capsys, *args):
    code = main(["leaderboard", *args])
    printed = capsys.readouterr()
    return code, printed


def test_runs_of_other_seeds_and_one_protocol_merge_into_one_configuration(run, capsys):
    a, b = run("a", seed=0), run("b", seed=1)
    code, printed = leaderboard(capsys, a, b, "--format", "csv")
    assert code == 0 and printed.err == ""
    summary = pd.read_csv(io.StringIO(printed.out))
    assert set(summary["n_seeds"]) == {2} and len(summary) == 2  # the baseline and the white mask


def test_the_same_configuration_trained_differently_is_refused_naming_both_folders(run, capsys):
    a, b = run("a", seed=0, epochs=1), run("b", seed=1, epochs=2)
    code, printed = leaderboard(capsys, a, b)
    assert code == 2 and printed.out == "" and printed.err.count("\n") == 1
    assert printed.err.startswith(f"error: {a} and {b} both hold dataset=blobs")
    assert f"train.epochs: 1 in {a}, 2 in {b}" in printed.err and "computed differently" in printed.err


def test_the_same_configuration_from_other_plugin_versions_is_refused(run, tiny, capsys):
    a = run("a", seed=0)
    tiny("2.0")
    b = run("b", seed=1)
    code, printed = leaderboard(capsys, a, b)
    assert code == 2 and printed.err.count("\n") == 1
    assert f"backbone tiny: xaibench-tiny 1.0 in {a}, xaibench-tiny 2.0 in {b}" in printed.err


def test_the_same_cell_in_two_folders_is_an_error_in_either_order(run, capsys):
    a, b = run("a", seed=0), run("b", seed=0)
    for first, second in ((a, b), (b, a)):
        code, printed = leaderboard(capsys, first, second)
        assert code == 2 and printed.err.count("\n") == 1
        assert printed.err.startswith(f"error: {first} and {second} both hold the cell dataset=blobs")
    code, printed = leaderboard(capsys, a, a)
    assert code == 2 and "given twice" in printed.err


def test_a_folder_shows_the_cells_of_its_current_grid_and_says_once_what_it_left_out(run, capsys, recwarn):
    folder = run("a", masks="white, black")
    code, printed = leaderboard(capsys, folder, "--format", "csv")
    assert code == 0 and set(pd.read_csv(io.StringIO(printed.out))["mask"]) == {"none", "white", "black"}
    run("a", masks="white")  # the black mask dropped from the grid, rerun into the same folder
    recwarn.clear()
    code, printed = leaderboard(capsys, folder, "--format", "csv")
    assert code == 0 and set(pd.read_csv(io.StringIO(printed.out))["mask"]) == {"none", "white"}
    said = [str(w.message) for w in recwarn if "earlier grids" in str(w.message)]
    assert said == [f"{folder}: 1 cell of earlier grids in this folder left out (not in the grid last run there)"]
    code, printed = leaderboard(capsys, folder)
    assert code == 0 and "black" not in printed.out
