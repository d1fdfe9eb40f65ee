"""``xaibench run --dry-run`` estimates each stage kind's cost (``xaibench.pipeline.estimate``), in forward-pass
equivalents counted from the plan and, where a pass can be timed here (``xaibench.pipeline.calibration``), in
seconds: the counts by hand, the table, the faithfulness hint, and every way the timing can fail."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.commands.run import run
from xaibench.pipeline import calibration, faithfulness
from xaibench.pipeline.estimate import Rates, Work, estimate_plan, faithfulness_work, split_sizes, stage_work
from xaibench.pipeline.plan import MixedModel, plan_run

GRID = """\
name: small
seeds: [0]
datasets:
  - {name: synthetic, n_train: 40, n_val: 10, n_test: 20, image_size: 32}
backbones:
  - {name: resnet18, weights: none, target_layer: layer3}
masks: [blur]
ensembles:
  - name: logit-mix
    sweep: {alpha: [0.5]}
explainers: [gradcam]
seeders: [{name: top-k, k: 2}]
segmenters: [cam-threshold]
train: {epochs: 2}
finetune: {epochs: 1}
protocol: {faithfulness_steps: 4, faithfulness_images: 16}
"""
# At 4 steps, per measured image: the image whole and blurred (2 passes), then for the explanation's maps
# and the random maps each: deletion and insertion (3 perturbed passes each) and ROAD (3 percentiles,
# least and most relevant removed: 6 passes, 6 solves).
PER_IMAGE_PASSES = 2 + 2 * (3 + 3 + 6)
PER_IMAGE_SOLVES = 2 * 6
STAND_IN = Rates("cpu", pass_s=0.01, solve_s=0.02, timed_on="a stand-in")


def estimate_lines(printed: str) -> list[str]:
    lines = printed.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("estimated cost")):]


def rows(printed: str) -> dict[str, list[str]]:
    """The cost table's cells by stage kind, in the printed order."""
    table = [line.split("  ") for line in estimate_lines(printed)[3:] if not line.startswith("  note")
             and not line.startswith("  hint")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line if c.strip()] for line in table)}


def test_the_units_of_a_small_grid_are_those_counted_by_hand(registry, write_grid):
    grid, plan = plan_run(write_grid(GRID), registry, fetch=False)
    estimate = estimate_plan(plan, registry)
    assert {k.kind: (k.stages, k.work, k.unknown) for k in estimate.kinds} == {
        "data": (1, Work(calls=40 + 10 + 20), 0),
        "train": (1, Work(passes=3 * 40 * 2), 0),  # 40 images, 2 epochs, a step ~3 passes
        "finetune": (1, Work(passes=3 * 40 * 1), 0),
        "logits": (2, Work(passes=2 * (20 + 10)), 0),  # test and val, baseline and masked model
        # baseline and ensemble (both members), on test and on val, ~2 passes an image
        "explain": (4, Work(passes=2 * 20 + 2 * 10 + 2 * 2 * 20 + 2 * 2 * 10), 0),
        # the baseline's stage, then the ensemble's: its raw member's references and random-map passes, and the
        # random maps' solves, are the baseline stage's (remembered in the process); its own maps' are new
        "faithfulness": (2, Work(passes=16 * PER_IMAGE_PASSES + 16 * (2 * 12 + 1 * (2 + 12)),
                                 solves=16 * PER_IMAGE_SOLVES + 16 * 6), 0),
        "seeds": (2, Work(calls=2 * 20), 0),
        "segment": (2, Work(calls=2 * 20), 0),
    }
    sizes = split_sizes(grid.datasets[0].choices()[0], registry)
    by_model = {isinstance(s.spec.model, MixedModel): stage_work(s.spec, sizes) for s in plan.stages.values()
                if s.kind == "faithfulness"}
    assert by_model[False] == Work(passes=16 * PER_IMAGE_PASSES, solves=16 * PER_IMAGE_SOLVES)
    assert by_model[False] == faithfulness_work(16, 4)
    # an ensemble runs both its members on every image: twice the passes, the same imputations
    assert by_model[True] == Work(passes=2 * 16 * PER_IMAGE_PASSES, solves=16 * PER_IMAGE_SOLVES)


class CountingModel(torch.nn.Module):
    """A two-class model that counts the images it is given."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0].amax(dim=(1, 2))], dim=1)


@pytest.mark.parametrize("steps", [2, 4, 10])
def test_the_faithfulness_formula_counts_what_the_metrics_run(monkeypatch, steps):
    """What the faithfulness stage runs per batch (``StageRunner._run_faithfulness``): the references once,
    then the scores of the explanation's maps and of the random maps."""
    solves = []
    impute = faithfulness.impute
    monkeypatch.setattr(faithfulness, "impute", lambda *a, **k: solves.append(1) or impute(*a, **k))
    generator = torch.Generator().manual_seed(0)
    images, targets = torch.rand(2, 3, 12, 12, generator=generator), torch.tensor([0, 1])
    model = CountingModel()
    reference = faithfulness.references(model, images, targets, batch_size=2)
    for maps in (np.random.default_rng(0).random((2, 12, 12)), np.random.default_rng(1).random((2, 12, 12))):
        faithfulness.scores(model, images, maps, targets, steps=steps, batch_size=2, reference=reference)
    assert Work(passes=model.images, solves=len(solves)) == faithfulness_work(2, steps)


def test_the_dry_run_prints_the_table_by_cost_and_writes_nothing(registry, write_grid, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(calibration, "calibrate", lambda request, **kwargs: calibration.Calibration(STAND_IN))
    out = tmp_path / "out"
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    passes = 240 + 120 + 60 + 180 + 1024
    total = passes * 0.01 + 288 * 0.02
    head = estimate_lines(printed)[0]
    assert "an estimate" in head
    assert f"~{total:.0f} s of work on cpu at 1 pass = 10.00 ms, 1 ROAD solve = 20.0 ms" in head
    table = rows(printed)
    assert list(table) == ["faithfulness", "train", "explain", "finetune", "logits", "data", "seeds", "segment"]
    assert table["faithfulness"] == ["2", "1,024", "288 ROAD solves", f"{1024 * 0.01 + 288 * 0.02:.0f}",
                                     f"{(1024 * 0.01 + 288 * 0.02) / total:.0%}"]
    assert table["train"] == ["1", "240", f"{2.4:.0f}", f"{2.4 / total:.0%}"]
    assert table["seeds"] == ["2", "0", "40 maps", "—", "—"]
    result = run(write_grid(GRID), out, dry_run=True, registry=registry, echo=lambda text: None)
    kinds = result.info["estimate"]["kinds"]
    assert kinds["faithfulness"]["passes"] == 1024 and kinds["faithfulness"]["solves"] == 288
    assert kinds["faithfulness"]["seconds"] == pytest.approx(1024 * 0.01 + 288 * 0.02)
    assert result.info["estimate"]["rates"]["pass_s"] == 0.01 and not out.exists()


@pytest.mark.parametrize("timed", [True, False], ids=["seconds", "units"])
@pytest.mark.parametrize("protocol, dominates", [
    ("{faithfulness_steps: 4, faithfulness_images: 16}", True),  # 1,024 of 1,624 passes
    ("{faithfulness_steps: 2, faithfulness_images: 1}", False),  # 30 of 630
    ("{faithfulness_steps: 0}", False),
])
def test_the_faithfulness_hint_appears_when_faithfulness_dominates(registry, write_grid, tmp_path, monkeypatch,
                                                                    capsys, protocol, dominates, timed):
    if timed:
        monkeypatch.setattr(calibration, "calibrate", lambda request, **kwargs: calibration.Calibration(STAND_IN))
    grid = write_grid(GRID.replace("{faithfulness_steps: 4, faithfulness_images: 16}", protocol))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    hints = [line for line in estimate_lines(capsys.readouterr().out) if line.startswith("  hint")]
    if dominates:
        assert len(hints) == 1 and "faithfulness_images (now 16" in hints[0]
        assert "faithfulness_steps (now 4)" in hints[0] and "faithfulness_steps: 0 measures none" in hints[0]
    else:
        assert hints == []


class UnbuildableBackbone:
    """A backbone whose network cannot be built on this machine (its build needs what is not here)."""

    def __init__(self, *, width: int = 8):
        self.width = width

    def build(self, num_classes: int, *, pretrained: bool = True):
        raise RuntimeError("needs a compiled extension this machine does not have")

    def target_layers(self, model):
        return [model]


class UnbuildablePlugin:
    @hookimpl
    def register_backbones(self, register):
        register("unbuildable", UnbuildableBackbone)


# The timing's child process with the unbuildable backbone registered, as an installed plugin would be.
UNBUILDABLE_CHILD = [sys.executable, "-c", (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "from xaibench.kit.registry import get_registry; from test_dry_run_cost import UnbuildablePlugin; "
    "get_registry().add_plugin(UnbuildablePlugin(), name='unbuildable-plugin'); "
    "from xaibench.pipeline.calibration import main; sys.exit(main())")]


@pytest.mark.parametrize("child, timeout, problem", [
    (UNBUILDABLE_CHILD, None, "unbuildable: RuntimeError: needs a compiled extension this machine does not have"),
    ([sys.executable, "-c", "import os; os._exit(3)"], None, "the timing process ended with code 3"),
    ([sys.executable, "-c", "import time; time.sleep(30)"], 1, "timing unbuildable took over 1 s; stopped"),
], ids=["unbuildable", "crashes", "hangs"])
def test_a_backbone_that_cannot_be_timed_gives_units_only(registry, add_plugin, timed_dry_runs, write_grid, tmp_path,
                                                          monkeypatch, capsys, child, timeout, problem):
    add_plugin(UnbuildablePlugin(), name="unbuildable-plugin")
    monkeypatch.setattr(calibration, "CHILD", child)
    if timeout is not None:
        monkeypatch.setattr(calibration, "TIMEOUT_S", timeout)
    grid = write_grid(GRID.replace("{name: resnet18, weights: none, target_layer: layer3}", "unbuildable"))
    out = tmp_path / "out"
    assert main(["run", "--grid", str(grid), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr()
    head = estimate_lines(printed.out)[0]
    assert head == ("estimated cost (an estimate from stage counts, in forward-pass equivalents only, shares of the "
                    f"passes; not timed: {problem})")
    assert rows(printed.out)["faithfulness"] == ["2", "1,024", "288 ROAD solves", "—", f"{1024 / 1624:.0%}"]
    assert "Traceback" not in printed.out + printed.err and not out.exists()


def test_a_dataset_without_size_parameters_is_counted_as_unknown(registry, blobs, write_grid, tmp_path, capsys):
    grid = write_grid(GRID.replace("{name: synthetic, n_train: 40, n_val: 10, n_test: 20, image_size: 32}",
                                   "{name: blobs, size: 32}"))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    table = rows(printed)
    assert table["train"][:2] == ["1", "1 unknown"] and table["logits"][:2] == ["2", "2 unknown"]
    # faithfulness stops at its image limit whatever the split's size: at most 16 images each
    assert table["faithfulness"][:3] == ["2", "1,024", "288 ROAD solves"]
    assert "not timed: the image size of dataset blobs(size=32) is not a grid parameter (image_size)" in printed
    assert "dataset blobs(size=32): its split sizes are not grid parameters" in printed


def test_a_dry_run_times_a_pass_of_the_untrained_backbone_offline(registry, timed_dry_runs, write_grid, tmp_path,
                                                                   monkeypatch, capsys):
    """The real child process: resnet18 built without weights (none are fetched: TORCH_HOME stays empty)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run(write_grid(GRID), tmp_path / "out", dry_run=True, registry=registry)
    rates = result.info["estimate"]["rates"]
    assert rates is not None, result.info["estimate"]["not_timed"]
    assert rates["device"] == "cpu" and rates["pass_s"] > 0 and rates["solve_s"] > 0
    assert "resnet18(target_layer=layer3,weights=none) at 32 px, batch 8" == rates["timed_on"]
    seconds = result.info["estimate"]["kinds"]["faithfulness"]["seconds"]
    assert seconds == pytest.approx(1024 * rates["pass_s"] + 288 * rates["solve_s"])
    assert "s of work on cpu at 1 pass = " in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "torch").exists()
