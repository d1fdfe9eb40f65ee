"""Faults from outside xaibench during a run: a plugin ending the process, a worker dying, a model giving NaN,
the run folder deleted while the run writes to it. Each fails its cell (or the run, with one error line),
names whose fault it was, and leaves the rest of the run's results written."""

import json
import shutil
import sys
import textwrap

import pytest

import xaibench.kit.registry as registry_module
from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.kit.registry import Registry

GRID = """\
name: faults
seeds: [0]
datasets: [{name: blobs, n: 8}]
backbones: [tiny]
masks: [white, faulty]
ensembles: [{name: logit-mix, alpha: 0.5}]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
"""


class TinyNet:
    """A backbone of one convolution: trains in milliseconds on 32-pixel images."""

    def build(self, num_classes, *, pretrained=True):
        import torch

        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    def target_layers(self, model):
        return [model[0]]


class Halt(BaseException):
    """What a library might raise to stop everything: no ``Exception``, no ``SystemExit`` either."""


@pytest.fixture
def run(registry, blobs, write_grid, tmp_path, capsys):
    def go(text=GRID, out=None):
        out = out or tmp_path / "run"
        code = main(["run", "--grid", str(write_grid(text)), "--out", str(out), "--quiet"])
        printed = capsys.readouterr()
        info = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else None
        return code, info, printed

    return go


def _plugin(add_plugin, mask=None, backbone=TinyNet):
    class Faults:
        @hookimpl
        def register_backbones(self, register):
            register("tiny", backbone)

        @hookimpl
        def register_masks(self, register):
            if mask is not None:
                register("faulty", mask)

    add_plugin(Faults(), name="faults")


def _one_failure(info, kind, name):
    (failure,) = info["failures"]
    assert failure["component"].startswith(f"{kind} '{name}' (plugin 'faults', distribution ")
    return failure


def _halt():
    raise Halt("stop everything")


@pytest.mark.parametrize("stop, said", [
    (lambda: sys.exit(0), "called sys.exit(0)"),
    (lambda: sys.exit(3), "called sys.exit(3)"),
    (_halt, "Halt: stop everything"),
])
def test_a_plugin_ending_the_process_fails_its_cell_and_the_run_goes_on(run, add_plugin, tmp_path, stop, said):
    class Faulty:
        def __call__(self, images, foreground):
            stop()

    _plugin(add_plugin, Faulty)
    code, info, printed = run()
    assert code == 1 and "Traceback" not in printed.err
    failure = _one_failure(info, "mask", "faulty")
    assert failure["stage"].startswith("finetune on faulty-masked") and said in failure["message"]
    assert info["cells_done"] == 2 and info["cells_failed"] == 1  # the baseline and the white mask's cell
    table = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "## Failed cells" in table and said in table


def test_a_backbone_giving_nan_logits_fails_naming_it_and_the_stage(run, add_plugin):
    class NanNet(TinyNet):
        def build(self, num_classes, *, pretrained=True):
            import torch

            class Nan(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.inner = TinyNet().build(num_classes)

                def forward(self, x):
                    return self.inner(x) * float("nan")

            return Nan()

        def target_layers(self, model):
            return [model.inner[0]]

    _plugin(add_plugin, backbone=NanNet)
    code, info, printed = run(GRID.replace("masks: [white, faulty]", "masks: [white]"))
    assert code == 1 and "Traceback" not in printed.err
    failure = _one_failure(info, "backbone", "tiny")
    assert failure["stage"].startswith("train tiny")
    assert "training loss became nan at epoch 1, step 1: the model gave non-finite logits" in failure["message"]


def test_the_run_folder_deleted_during_the_run_is_one_error_line(run, add_plugin, tmp_path):
    out = tmp_path / "run"

    class Deleting:
        def __call__(self, images, foreground):
            shutil.rmtree(out, ignore_errors=True)
            return images

    _plugin(add_plugin, Deleting)
    code, _, printed = run()
    assert code == 2 and "Traceback" not in printed.err
    assert printed.err.startswith("error: the run folder") and "vanished during the run" in printed.err
    assert printed.err.count("\n") == 1 and "faulty" not in printed.err  # no stage failure blamed on the mask


# -- under the process executor: the workers load installed plugins, so the faulty ones are installed --

FAULTS_MODULE = """
    import os
    import sys

    from xaibench import hookimpl


    class TinyNet:
        def build(self, num_classes, *, pretrained=True):
            import torch

            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

        def target_layers(self, model):
            return [model[0]]


    class Quit:
        def __call__(self, images, foreground):
            sys.exit(3)


    class Die:
        def __call__(self, images, foreground):
            os._exit(7)  # the worker process ends at once, as a crash in native code would end it


    class Interrupt:
        def __call__(self, images, foreground):
            raise KeyboardInterrupt("raised by a plugin")  # a worker ignores Ctrl-C: this one is no Ctrl-C


    @hookimpl
    def register_backbones(register):
        register("tiny", TinyNet)


    @hookimpl
    def register_masks(register):
        register("quit", Quit)
        register("die", Die)
        register("interrupt", Interrupt)
    """


@pytest.fixture
def installed_faults(tmp_path, monkeypatch):
    """A distribution ``xaibench-faults`` installed on ``sys.path`` (which spawned workers inherit)."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "xaibench_faults.py").write_text(textwrap.dedent(FAULTS_MODULE))
    info = root / "xaibench_faults-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xaibench-faults\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[xaibench]\nxaibench_faults = xaibench_faults\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("XAIBENCH_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(registry_module, "_default", Registry())
    yield
    sys.modules.pop("xaibench_faults", None)


def test_under_process_a_plugins_exit_fails_its_cell_and_a_dead_worker_is_blamed_on_its_component(
        installed_faults, write_grid, tmp_path, capsys):
    grid = write_grid(GRID.replace("{name: blobs, n: 8}", "{name: synthetic, n_train: 8, n_val: 0, n_test: 8, "
                                                          "image_size: 32}")
                      .replace("masks: [white, faulty]", "masks: [quit, die, interrupt]")
                      + "executor: {name: process, workers: 1, threads: 1}\n")
    out = tmp_path / "run"
    code = main(["run", "--grid", str(grid), "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 1 and "Traceback" not in printed.err
    info = json.loads((out / "run.json").read_text())
    failures = {f["stage"].split(" ")[2]: f for f in info["failures"]}
    assert set(failures) == {"quit-masked", "die-masked", "interrupt-masked"} and info["cells_done"] == 1
    for name, said in (("quit", "called sys.exit(3)"), ("die", "worker died (exit code 7"),
                       ("interrupt", "KeyboardInterrupt: raised by a plugin")):
        failure = failures[f"{name}-masked"]
        assert failure["component"] == f"mask '{name}' (plugin 'xaibench_faults', distribution xaibench-faults 1.2.3)"
        assert said in failure["message"]
    assert (out / "leaderboard.md").is_file() and not list((out / "cache").glob("running/*"))


def test_in_a_ray_task_a_keyboard_interrupt_is_a_components_not_a_ctrl_c():
    """A Ray task, like a process worker, leaves Ctrl-C to the driver, so the stage runner fails the stage
    of a component raising ``KeyboardInterrupt`` instead of Ray cancelling the task (and the run with it).
    Checked here without starting Ray: a whole run under Ray takes a minute on two cores."""
    import signal

    from xaibench.pipeline.stages import passes_through
    from xaibench_plugins.executors import _call_with_threads

    before = signal.getsignal(signal.SIGINT)
    try:
        assert passes_through(KeyboardInterrupt())  # here, in the main process, it is a Ctrl-C
        assert _call_with_threads(lambda _: passes_through(KeyboardInterrupt()), None, None) is False
        assert _call_with_threads(lambda _: passes_through(SystemExit(0)), None, None) is False
    finally:
        signal.signal(signal.SIGINT, before)
