import textwrap

import numpy as np
import pytest

import xaibench.kit.registry as registry_module
from xaibench import hookimpl
from xaibench.kit.contracts import Sample
from xaibench.kit.registry import Registry
from xaibench.pipeline import calibration

TIMED = calibration.calibrate  # the real timing of a dry run (``timed_dry_runs``)


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test starts from the same global random state (Python, numpy, torch), whatever ran before
    it: a test that builds a model or draws data without its own seed still sees the same numbers, in any
    order the tests run in."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture(autouse=True)
def untimed_dry_runs(monkeypatch):
    """Dry runs give their cost estimate in forward-pass units only: timing a pass starts torch in a child
    process, seconds per dry run. The tests of the timing itself request ``timed_dry_runs``."""
    monkeypatch.setattr(calibration, "calibrate",
                        lambda request, **kwargs: calibration.Calibration(None, "not timed in the test suite"))


@pytest.fixture
def timed_dry_runs(monkeypatch):
    """Dry runs time a forward pass in a child process, as outside the tests."""
    monkeypatch.setattr(calibration, "calibrate", TIMED)


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """The folder of one local, uninterrupted run of ``test_run.GRID`` (the installed plugins), made once:
    the reference the executor and interrupt tests compare their leaderboards with, byte for byte."""
    from test_run import GRID

    from xaibench.commands.cli import main

    folder = tmp_path_factory.mktemp("tiny-reference")
    grid = folder / "grid.yaml"
    grid.write_text(GRID)
    assert main(["run", "--grid", str(grid), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture
def registry(monkeypatch):
    """A fresh registry of the installed plugins, also used by the CLI for the duration of the test."""
    reg = Registry()
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


@pytest.fixture
def add_plugin(registry):
    """Register a plugin object for one test and unregister it afterwards."""
    added = []

    def add(plugin, name="test-plugin"):
        registry.add_plugin(plugin, name=name)
        added.append(name)
        return plugin

    yield add
    for name in added:
        registry.remove_plugin(name)


class BlobDataset:
    """A tiny dataset for tests: a bright square on noise means class 1; masks only on class 1."""

    classes = ["absent", "present"]

    def __init__(self, *, size: int = 32, n: int = 16, seed: int = 0):
        self.size, self.n, self.seed = size, n, seed

    def split(self, name):
        rng = np.random.default_rng([self.seed, ("train", "val", "test").index(name)])
        samples = []
        for i in range(self.n if name != "val" else 0):
            image = rng.integers(0, 120, (self.size, self.size, 3), dtype=np.uint8)
            label = i % 2
            mask = None
            if label:
                r, c = rng.integers(0, self.size // 2, 2)
                mask = np.zeros((self.size, self.size), bool)
                mask[r : r + self.size // 3, c : c + self.size // 3] = True
                image[mask] = (230, 200, 40)
            samples.append(Sample(f"{name}-{i}", image, label, mask))
        return samples

    def fingerprint(self):
        return f"blob-{self.size}-{self.n}-{self.seed}"


class BlobPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("blobs", BlobDataset)


@pytest.fixture
def blobs(add_plugin):
    return add_plugin(BlobPlugin(), name="blobs-plugin")


@pytest.fixture
def write_grid(tmp_path):
    def write(text, name="grid.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
