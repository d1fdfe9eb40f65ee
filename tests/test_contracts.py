"""A component that breaks its contract fails its own cells with a message naming it, its plugin and
distribution, its input and what was wrong; the healthy cells of the same grid complete. Also: the
Protocols, the optional capabilities and the validators that both runs and xaibench.kit.testing use."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import BlobDataset
from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import ContractViolation
from xaibench.kit import contracts, testing
from xaibench.kit.contracts import Prompts, Sample

GRID = """\
name: contracts
seeds: [0]
datasets: [DATASETS]
backbones: [BACKBONES]
masks: [MASKS]
ensembles: [ENSEMBLES]
explainers: [EXPLAINERS]
seeders: [SEEDERS]
segmenters: [SEGMENTERS]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


def grid(datasets="{name: blobs, n: 12}", backbones="{name: timm, params: {name: test_resnet}}", masks="", ensembles="",
         explainers="", seeders="", segmenters=""):
    text = GRID
    for key, value in (("DATASETS", datasets), ("BACKBONES", backbones), ("MASKS", masks), ("ENSEMBLES", ensembles),
                       ("EXPLAINERS", explainers), ("SEEDERS", seeders), ("SEGMENTERS", segmenters)):
        text = text.replace(f"[{key}]", f"[{value}]")
    return text


# -- broken components, one class each ---------------------------------------------------------------------


class OneChannel:
    """Returns (B, 1, H, W): the grey foreground on black."""

    def __call__(self, images, foreground):
        return torch.where(foreground, images.mean(dim=1, keepdim=True), 0.0)


class Overwriting:
    """Also darkens the foreground."""

    def __call__(self, images, foreground):
        return torch.where(foreground, images * 0.5, 1.0)


class Float64Mask:
    def __call__(self, images, foreground):
        return torch.where(foreground, images, 1.0).double()


def _gradcam(model, images, targets, target_layers):
    from xaibench_plugins.explainers import GradCam

    return GradCam().explain(model, images, targets, target_layers=target_layers)


class Scaled255:
    def explain(self, model, images, targets, *, target_layers, masks=None):
        return _gradcam(model, images, targets, target_layers) * 255


class Float64Maps:
    def explain(self, model, images, targets, *, target_layers, masks=None):
        return _gradcam(model, images, targets, target_layers).astype(np.float64)


class NanMaps:
    def explain(self, model, images, targets, *, target_layers, masks=None):
        maps = _gradcam(model, images, targets, target_layers)
        maps[:, 0, 0] = np.nan
        return maps


def _peak(saliency):
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return float(row), float(col)


class RowCol:
    """The highest pixel as (row, col) instead of (x, y)."""

    def __call__(self, saliency):
        return Prompts(np.array([_peak(saliency)], np.float32), np.ones(1, np.int64))


class Outside:
    """Points up to 1.6 times the image size."""

    def __call__(self, saliency):
        row, col = _peak(saliency)
        height, width = saliency.shape
        points = np.array([[col, row], [1.6 * width - 1, 1.6 * height - 1], [col, 1.5 * height]], np.float32)
        return Prompts(points, np.ones(3, np.int64))


class Float64Points:
    def __call__(self, saliency):
        row, col = _peak(saliency)
        return Prompts(np.array([[col, row]], np.float64), np.ones(1, np.int64))


class LabelSeven:
    def __call__(self, saliency):
        row, col = _peak(saliency)
        return Prompts(np.array([[col, row]], np.float32), np.array([7], np.int64))


class FloatMasks(BlobDataset):
    """Masks of 0.1 and 1.0 instead of bool."""

    def split(self, name):
        return [Sample(s.id, s.image, s.label, None if s.mask is None else np.where(s.mask, 1.0, 0.1))
                for s in super().split(name)]

    def fingerprint(self):
        return "float-" + super().fingerprint()


class NoPretrained:
    """A backbone written as ``build(self, num_classes)``, without the optional ``pretrained``."""

    def build(self, num_classes):
        from xaibench_plugins.backbones import ResNet18

        return ResNet18().build(num_classes, pretrained=False)

    def target_layers(self, model):
        return [model.net.layer4]

    def activation_layout(self, model, layer):
        return contracts.ActivationLayout.channels_first()


class Broken:
    @hookimpl
    def register_masks(self, register):
        register("one-channel", OneChannel)
        register("overwriting", Overwriting)
        register("float64-mask", Float64Mask)

    @hookimpl
    def register_explainers(self, register):
        register("scaled-255", Scaled255)
        register("float64-maps", Float64Maps)
        register("nan-maps", NanMaps)

    @hookimpl
    def register_seeders(self, register):
        register("row-col", RowCol)
        register("outside", Outside)
        register("float64-points", Float64Points)
        register("label-seven", LabelSeven)

    @hookimpl
    def register_datasets(self, register):
        register("float-masks", FloatMasks)

    @hookimpl
    def register_backbones(self, register):
        register("no-pretrained", NoPretrained)


@pytest.fixture
def run(registry, blobs, add_plugin, write_grid, tmp_path, capsys):
    add_plugin(Broken(), name="broken-plugin")

    def go(text):
        out = tmp_path / "run"
        code = main(["run", "--grid", str(write_grid(text)), "--out", str(out), "--quiet"])
        printed = capsys.readouterr()
        assert "Traceback" not in printed.out + printed.err
        table = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
        return code, json.loads((out / "run.json").read_text()), table

    return go


def _errors(table, column):
    failed = table[table["status"] == "failed"]
    return {value: error for value, error in zip(failed[column], failed["error"])}


def who(kind, name):
    return f"{kind} '{name}' (plugin 'broken-plugin', distribution broken-plugin 0)"


def test_broken_masks_fail_their_cells_and_say_what_was_wrong(run):
    code, info, table = run(grid(masks="white, one-channel, overwriting, float64-mask",
                                 ensembles="{name: logit-mix, alpha: 0.5}"))
    assert code == 1 and info["cells_done"] == 2 and info["cells_failed"] == 3  # baseline and white complete
    errors = _errors(table, "mask")
    assert set(errors) == {"one-channel", "overwriting", "float64-mask"}
    for name, error in errors.items():
        assert who("mask", name) in error and "(given a training batch: images (8, 3, 32, 32) float32)" in error
    assert "returned float32 (8, 1, 32, 32) on cpu for images float32 (8, 3, 32, 32)" in errors["one-channel"]
    assert "foreground pixel values; a mask replaces the background only" in errors["overwriting"]
    assert "returned float64 (8, 3, 32, 32)" in errors["float64-mask"]


def test_broken_explainers_fail_their_cells_and_say_what_was_wrong(run):
    code, info, table = run(grid(explainers="gradcam, scaled-255, float64-maps, nan-maps"))
    assert code == 1 and info["cells_done"] == 1 and info["cells_failed"] == 3
    errors = _errors(table, "explainer")
    for name, error in errors.items():
        assert who("explainer", name) in error and "test images from 'test-1')" in error
    assert "returned values in [0, 255]" in errors["scaled-255"]
    assert "returned float64 (6, 32, 32); expected a float32 numpy array (6, 32, 32)" in errors["float64-maps"]
    assert "6 of 6 maps hold NaN or inf" in errors["nan-maps"]
    assert table[table["explainer"] == "gradcam"]["jaccard"].astype(float).between(0, 1).all()


def test_broken_seeders_fail_their_cells_and_say_what_was_wrong(run):
    code, info, table = run(grid(explainers="oracle", seeders="top-k, row-col, outside, float64-points, label-seven",
                                 segmenters="cam-threshold"))
    assert code == 1 and info["cells_done"] == 1 and info["cells_failed"] == 4
    errors = _errors(table, "seeder")
    for name, error in errors.items():
        assert who("seeder", name) in error and "(given the map of test image 'test-" in error
    assert "points are (x=column, y=row), not (row, col)" in errors["row-col"]
    assert "2 of 3 points outside the 32×32 image, e.g. (50.2, 50.2)" in errors["outside"]
    assert "gave points float64 (1, 2); points are float32" in errors["float64-points"]
    assert "gave labels 7; a label is 1 (foreground) or 0 (background)" in errors["label-seven"]


def test_a_dataset_with_float_masks_fails_with_the_values_it_found(run):
    code, info, table = run(grid(datasets="{name: blobs, n: 12}, float-masks", masks="white",
                                 ensembles="{name: logit-mix, alpha: 0.5}"))
    assert code == 1 and info["cells_done"] == 2 and info["cells_failed"] == 2
    (error,) = set(_errors(table, "dataset").values())
    assert who("dataset", "float-masks") in error
    assert "sample 'train-1': mask is float64 (32, 32) with values 0.1, 1; a mask is a bool numpy array" in error
    assert "(given split('train'))" in error


def test_a_backbone_without_the_pretrained_keyword_runs_every_stage(run):
    code, info, table = run(grid(backbones="no-pretrained", masks="white", ensembles="{name: logit-mix, alpha: 0.5}",
                                 explainers="gradcam"))
    assert code == 0 and info["cells_done"] == info["cells"] == 2 and set(table["status"]) == {"done"}


# -- the contract as code ----------------------------------------------------------------------------------


def test_every_kind_has_a_protocol_optional_capabilities_and_a_validator():
    from xaibench.kit.registry import KINDS

    assert set(contracts.PROTOCOLS) == set(contracts.OPTIONAL) == set(contracts.VALIDATORS) == set(KINDS)
    assert contracts.required("datasets") == ["classes", "split", "fingerprint"]
    assert contracts.required("masks") == ["__call__"]
    assert contracts.required("backbones") == ["build", "target_layers"]
    assert "uses_ground_truth" in contracts.OPTIONAL["explainers"]
    assert {"uses_saliency", "segment_with_scores"} <= set(contracts.OPTIONAL["segmenters"])


def test_capability_gives_the_declared_value_or_the_default():
    class Plain:
        def build(self, num_classes):
            pass

    class Declaring:
        uses_ground_truth = True

        def build(self, num_classes, *, pretrained=True):
            pass

    assert contracts.capability(Plain(), "uses_ground_truth", "explainers") is False
    assert contracts.capability(Declaring(), "uses_ground_truth", "explainers") is True
    assert contracts.capability(Plain(), "pretrained", "backbones") is False
    assert contracts.capability(Declaring(), "pretrained", "backbones") is True
    with pytest.raises(KeyError, match="no optional capability 'colour'"):
        contracts.capability(Plain(), "colour", "masks")


@pytest.mark.parametrize("prompts, problem", [
    (Prompts(np.array([[3.0, 4.0]], np.float32), np.array([1], np.int32)), "labels are int64"),
    (Prompts(np.array([[40.0, 4.0]], np.float32), np.ones(1, np.int64)), "1 of 1 points outside the 32×24 image"),
    (Prompts(np.array([[np.nan, 4.0]], np.float32), np.ones(1, np.int64)), "outside"),
])
def test_prompt_validation_refuses_without_coercing(prompts, problem):
    with pytest.raises(ContractViolation, match=problem):
        contracts.validate_prompts(prompts, np.zeros((24, 32), np.float32) + np.eye(24, 32, dtype=np.float32))


def test_a_transposed_point_is_caught_only_where_the_map_can_tell():
    saliency = np.zeros((32, 32), np.float32)
    saliency[5, 20] = 1.0  # row 5, column 20: the peak is at x=20, y=5
    right = Prompts(np.array([[20.0, 5.0]], np.float32), np.ones(1, np.int64))
    contracts.validate_prompts(right, saliency)
    with pytest.raises(ContractViolation, match=r"not \(row, col\)"):
        contracts.validate_prompts(Prompts(np.array([[5.0, 20.0]], np.float32), np.ones(1, np.int64)), saliency)
    symmetric = saliency + saliency.T  # both readings are salient: nothing to tell
    contracts.validate_prompts(Prompts(np.array([[5.0, 20.0]], np.float32), np.ones(1, np.int64)), symmetric)


def test_the_conformance_checks_use_the_run_validators(monkeypatch):
    """xaibench.kit.testing and a run hold a seeder to one contract: the check fails through the very validator
    the stage runner calls."""
    calls = []
    original = contracts.validate_prompt_sets  # what the seeds stage calls

    def spy(prompt_sets, maps, kinds=None):
        calls.append(maps.shape)
        return original(prompt_sets, maps, kinds)

    monkeypatch.setattr(contracts, "validate_prompt_sets", spy)
    with pytest.raises(AssertionError, match="outside the 40×32 image"):
        testing.check_seeder(Outside(), name="seeder 'outside'")
    assert calls
