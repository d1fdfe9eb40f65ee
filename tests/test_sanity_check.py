"""The explanation sanity check (model-parameter randomisation test): the re-initialisation against
Quantus's MPRT model, the similarities against scipy/scikit-image and Quantus's MPRT scores on one fixed
case, and ``protocol.sanity`` through the CLI (columns, the mark on an explainer that ignores the model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.commands.cli import main
from xaibench.kit.registry import Registry
from xaibench.kit.testing import tiny_classifier
from xaibench.pipeline import sanity


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def test_resnet18_is_reinitialised_from_layer4_on_and_nothing_below():
    model = Registry().create("backbones", "resnet18").build(2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reset = sanity.randomise_top_layers(model, [model.net.layer4])
    assert reset[0].startswith("net.layer4.") and reset[-1] == "net.fc"
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("net.layer4.", "net.fc.")) for k in changed)
    assert any(k.startswith("net.fc.") for k in changed) and any(k.startswith("net.layer4.0.conv1") for k in changed)


def test_the_randomised_network_is_quantus_mprt_model_after_as_many_cascade_steps():
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model = tiny_classifier()
    ours = copy_of(model)
    reset = sanity.randomise_top_layers(ours, [ours.features[2]])
    assert reset == ["features.2", "head.2"]
    steps = PyTorchModel(copy_of(model), channel_first=True).get_random_layer_generator(order="top_down", seed=42)
    for _ in range(len(reset)):
        name, theirs = next(steps)
    assert name == "features.2"
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key
    assert torch.equal(ours.features[0].weight, model.features[0].weight)  # below the target layer: kept


def test_a_network_without_the_target_layer_is_refused():
    with pytest.raises(ValueError, match="none of the target layers"):
        sanity.randomise_top_layers(tiny_classifier(), [torch.nn.Linear(2, 2)])


def test_similarities_equal_scipy_and_scikit_image():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 24), dtype=np.float32)
    b = (0.6 * a + 0.4 * rng.random((3, 20, 24))).astype(np.float32)
    b[1] = np.round(b[1] * 4) / 4  # ties, which Spearman ranks as averages
    b[2] = 0.5  # a constant map: no rank correlation
    found = sanity.similarity(a, b)
    for i in range(2):
        assert found["sanity_spearman"][i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic, abs=1e-12)
        assert found["sanity_ssim"][i] == pytest.approx(structural_similarity(a[i].astype(np.float64), b[i].astype(np.float64), data_range=1.0), abs=1e-12)
    assert np.isnan(found["sanity_spearman"][2]) and np.isnan(found["sanity_ssim"][2])
    assert found["sanity_spearman"][0] > found["sanity_spearman"][1] > 0.3
    same = sanity.similarity(a, a.copy())
    assert np.allclose(same["sanity_spearman"], 1.0) and np.allclose(same["sanity_ssim"], 1.0)


def test_the_spearman_equals_quantus_mprt_on_a_fixed_case():
    import quantus

    model = tiny_classifier()
    gradcam = Registry().create("explainers", "gradcam")
    images = torch.rand(4, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, 1, 1, 0])

    def explain(model, inputs, targets, **kwargs):
        model = model.eval()
        maps = gradcam.explain(model, torch.as_tensor(inputs), torch.as_tensor(targets),
                               target_layers=[model.features[2]])
        return maps[:, None]

    trained = explain(model, images, targets)[:, 0]
    randomised = copy_of(model)
    sanity.randomise_top_layers(randomised, [randomised.features[2]])
    ours = sanity.similarity(trained, explain(randomised, images, targets)[:, 0])["sanity_spearman"]

    mprt = quantus.MPRT(layer_order="top_down", seed=42, abs=False, normalise=False, disable_warnings=True,
                        similarity_func=quantus.similarity_func.correlation_spearman)
    scores = mprt(model=copy_of(model), x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=trained[:, None],
                  explain_func=explain, batch_size=4, device="cpu")
    theirs = np.asarray(scores["features.2"])  # after the head and features.2: the layers we re-initialise
    finite = np.isfinite(ours)  # NaN where the randomised model's map is constant (all below the ReLU)
    assert finite.sum() >= 2 and np.abs(ours[finite]).max() < 0.95  # the maps did change
    np.testing.assert_allclose(ours, theirs, atol=1e-9)  # NaN in the same places


# -- through the CLI -----------------------------------------------------------------------------------------

GRID = """\
name: mprt
seeds: [0]
datasets: [{name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32}]
backbones: [resnet18]
explainers: [gradcam, random]
train: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0, sanity: true, sanity_images: 3}
"""


def test_a_run_with_sanity_reports_it_beside_the_localisation_metrics_and_marks_a_model_blind_map(
        registry, write_grid, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "leaderboard.csv").set_index("explainer")
    assert table.loc["random", "sanity_spearman"] == pytest.approx(1.0)  # noise seeded by the image alone
    assert table.loc["random", "sanity_ssim"] == pytest.approx(1.0)
    assert table.loc["gradcam", "sanity_spearman"] < sanity.UNCHANGED_SPEARMAN
    assert (table["sanity_n"] == 3).all()
    text = (out / "leaderboard.md").read_text()
    random_section = text.split("Explanation metrics · random")[1].split("###")[0]
    gradcam_section = text.split("Explanation metrics · gradcam")[1].split("###")[0]
    assert "sanity_spearman" in random_section and "≈ unchanged" in random_section
    assert "sanity_spearman" in gradcam_section and "≈ unchanged" not in gradcam_section
    assert "(Adebayo et al. 2018; lower is better)" in text.split("##")[0]  # the note says how to read it

    # one sanity stage per explanation; off (the default), none is planned
    for setting, expected in (("true", "sanity 2"), ("false", None)):
        capsys.readouterr()
        grid = write_grid(GRID.replace("sanity: true", f"sanity: {setting}"), name=f"{setting}.yaml")
        assert main(["run", "--grid", str(grid), "--out", str(tmp_path / setting), "--dry-run"]) == 0
        stages = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("stages:"))
        assert (expected in stages) if expected else ("sanity" not in stages)


def test_sanity_options_are_validated(write_grid, tmp_path, capsys):
    grid = write_grid(GRID.replace("sanity_images: 3", "sanity_images: -1"))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "bad"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "protocol.sanity_images: Input should be greater than or equal to 0" in err
