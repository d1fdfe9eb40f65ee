"""The protocol a reviewer accepts: free parameters chosen on validation (never on test), explanations read
against chance, and faithfulness beside localisation."""

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.pipeline import faithfulness, metrics, results, schema, scoring
from xaibench.pipeline.artifacts import Memo
from xaibench.pipeline.store import save_arrays
from xaibench.presentation import leaderboard

# -- α* on validation -------------------------------------------------------------------------------------


def _cells(tmp_path, val, test, seeds=(0,)):
    """A baseline and logit-mix at α 0.8 / 0.9 / 1.0 (median mask) per seed, with the given validation
    accuracies per α (None: no val split) and per-image test correctness per α."""
    rows, files = [], {}
    for seed in seeds:
        variants = [("baseline", "none", 1.0)] + [(f"logit-mix(alpha={a})", "median", a) for a in (0.8, 0.9, 1.0)]
        for ensemble, mask, alpha in variants:
            cell_id = f"{ensemble}-{seed}"
            correct = np.asarray(test.get(alpha if ensemble != "baseline" else "baseline"), dtype=bool)
            v = val.get(alpha) if (val is not None and ensemble != "baseline") else None
            rows.append({"cell_id": cell_id, "dataset": "synthetic", "backbone": "resnet18", "seed": seed,
                         "mask": mask, "ensemble": ensemble, "alpha": alpha, "explainer": "", "seeder": "",
                         "segmenter": "", "status": "done", "accuracy": float(correct.mean()),
                         "val_accuracy": float("nan") if v is None else v, "n_val": 0 if val is None else 20})
            files[cell_id] = tmp_path / f"{cell_id}-{seed}.npz"
            save_arrays(files[cell_id], correct=correct, ids=np.arange(len(correct)).astype(str))
    return results.frame(rows), files


TEST = {"baseline": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0], 0.8: [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        0.9: [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], 1.0: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]}


def test_alpha_star_is_read_off_validation_where_test_disagrees(tmp_path):
    # validation prefers α = 0.8, test prefers α = 1.0: the row must report α = 0.8's test accuracy
    df, files = _cells(tmp_path, {0.8: 0.9, 0.9: 0.7, 1.0: 0.6}, TEST)
    summary = results.summarise(df, files).set_index("ensemble")
    chosen = summary.loc[f"logit-mix {results.SELECTED}"]
    assert chosen["alpha_star"] == "0.8" and chosen["selection"] == "val"
    assert chosen["accuracy"] == pytest.approx(0.3)
    assert chosen["mcnemar_b"] + chosen["mcnemar_c"] == 1  # paired with the baseline like any ensemble
    text = leaderboard.markdown(results.frame(df.to_dict("records")), results.summarise(df, files))
    assert "| α* (val) | 30.00 [" in text
    assert "α* (val) (α = 0.8 by seed)" in text


def test_alpha_star_ties_go_to_the_larger_alpha_and_each_seed_chooses_its_own(tmp_path):
    df, files = _cells(tmp_path, {0.8: 0.8, 0.9: 0.8, 1.0: 0.5}, TEST, seeds=(0, 1))
    df.loc[(df["seed"] == 1) & (df["alpha"] == 1.0) & (df["ensemble"] != "baseline"), "val_accuracy"] = 0.95
    chosen = results.alpha_choices(df).set_index("seed")
    assert chosen.loc[0, "alpha_star"] == 0.9 and chosen.loc[1, "alpha_star"] == 1.0
    summary = results.summarise(df, files).set_index("ensemble")
    assert summary.loc[f"logit-mix {results.SELECTED}", "alpha_star"] == "0.9 / 1"
    assert summary.loc[f"logit-mix {results.SELECTED}", "accuracy"] == pytest.approx((0.5 + 0.9) / 2)


def test_without_a_val_split_the_tables_say_the_choice_was_not_possible(tmp_path):
    df, files = _cells(tmp_path, None, TEST)
    summary = results.summarise(df, files).set_index("ensemble")
    row = summary.loc[f"logit-mix {results.SELECTED}"]
    assert row["selection"] == results.NO_VAL and pd.isna(row.get("accuracy"))
    text = leaderboard.markdown(df, results.summarise(df, files))
    assert "| α* (val) | not possible (no val split) |" in text
    # nothing fell back to test: no accuracy is printed on that row
    line = next(line for line in text.splitlines() if line.startswith("| α* (val)"))
    assert "[" not in line


def test_alpha_choice_reads_no_test_number(tmp_path):
    """Scrambling every test number (accuracy, correctness files) leaves the choice unchanged."""
    df, files = _cells(tmp_path, {0.8: 0.6, 0.9: 0.9, 1.0: 0.7}, TEST)
    first = results.alpha_choices(df)[["seed", "alpha_star", "source"]]
    scrambled = df.assign(accuracy=np.random.default_rng(0).random(len(df)))
    assert results.alpha_choices(scrambled)[["seed", "alpha_star", "source"]].equals(first)
    assert first["alpha_star"].tolist() == [0.9]


# -- τ* on validation -------------------------------------------------------------------------------------


def _squares(n, size, inside):
    """Maps with a bright square at ``inside`` (value 1) on a 0.3 background with a dark (0) corner."""
    maps = np.full((n, size, size), 0.3, dtype=np.float32)
    maps[:, :4, :4] = 0.0
    maps[(slice(None), *inside)] = 1.0
    return maps


def test_tau_star_is_chosen_on_validation_maps_and_masks():
    size = 12
    val_maps = _squares(4, size, np.s_[2:10, 2:10])
    # on val the mask is everything but the dark corner: a low threshold wins
    val_masks = np.ones((4, size, size), bool)
    val_masks[:, :4, :4] = False
    test_maps = val_maps.copy()
    test_masks = np.zeros((4, size, size), bool)
    test_masks[:, 2:10, 2:10] = True  # on test a high threshold would win
    val = {"references": val_masks}
    explained = {"index": np.arange(4), "maps": val_maps}
    test_sweep = metrics.sweep_per_image(test_maps, test_masks)
    tau, at_tau = scoring.validation_threshold(explained, val, test_sweep)
    assert tau == pytest.approx(0.05)
    assert np.allclose(at_tau, test_sweep[:, 0])
    assert at_tau.mean() < np.nanmax(np.nanmean(test_sweep, axis=0))  # test's own best is not reported
    empty = scoring.validation_threshold({"index": np.zeros(0, int), "maps": val_maps[:0]}, val, test_sweep)
    assert np.isnan(empty[0]) and np.isnan(empty[1]).all()


# -- chance --------------------------------------------------------------------------------------------------


def test_chance_scores_are_the_random_and_centre_explainers_metrics(registry):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    references = np.zeros((5, 16, 16), bool)
    references[:, 4:12, 4:12] = True
    test = {"images": images, "references": references}
    index = np.array([0, 2, 3])
    found = scoring.chance_scores("data", index, test, Memo(None), registry, 0.5)
    x = torch.from_numpy(images[index]).permute(0, 3, 1, 2).float() / 255
    for name in ("random", "centre"):
        maps = registry.create("explainers", name).explain(None, x, None, target_layers=[])
        expected = metrics.explanation_per_image(maps, references[index], threshold=0.5)
        for metric in schema.names("explanation"):
            assert np.allclose(found[f"{name}_{metric}"], expected[metric], equal_nan=True), (name, metric)
    # a centred object: the centre prior beats noise
    assert np.nanmean(found["centre_jaccard"]) > np.nanmean(found["random_jaccard"])


def test_a_value_no_better_than_random_is_marked(tmp_path):
    row = pd.Series({"jaccard": 0.2, "lift_jaccard": -0.01, "complete": True, "n_seeds": 1, "seeds_expected": 1})
    assert leaderboard.at_or_below_chance(row, "jaccard")
    assert leaderboard.BELOW_CHANCE in leaderboard._value(row, "jaccard", 1.0, 3)
    row["lift_jaccard"] = 0.05
    assert leaderboard.BELOW_CHANCE not in leaderboard._value(row, "jaccard", 1.0, 3)


# -- faithfulness ----------------------------------------------------------------------------------------


class Patch(torch.nn.Module):
    """Two classes whose logits are ±(mean contrast |x − 0.5| of the top-left quarter − 0.25) × 20: a model
    that looks only at the texture of one region (a blur or an imputation removes it)."""

    def forward(self, x):
        size = x.shape[-1] // 2
        z = ((x[:, :, :size, :size] - 0.5).abs().mean(dim=(1, 2, 3)) - 0.25) * 20
        return torch.stack([-z, z], dim=1)


def _textured(n):
    """Grey images with a one-pixel checkerboard in the top-left quarter (class 1 for ``Patch``)."""
    images = torch.full((n, 3, 16, 16), 0.5)
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    images[:, :, :8, :8] = board.float()
    return images


def _reference_curves(model, images, maps, targets, steps):
    """Deletion and insertion one image and one step at a time, from the definition."""
    blurred = faithfulness.blur(images)
    n = images.shape[-1] * images.shape[-2]
    deletion, insertion = np.zeros((len(images), steps + 1)), np.zeros((len(images), steps + 1))
    for i in range(len(images)):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for k in range(steps + 1):
            top = np.zeros(n, bool)
            top[order[: round(k * n / steps)]] = True
            top = torch.from_numpy(top.reshape(maps[i].shape))
            removed = torch.where(top, blurred[i], images[i])
            inserted = torch.where(top, images[i], blurred[i])
            with torch.no_grad():
                deletion[i, k] = torch.softmax(model(removed[None]), 1)[0, targets[i]].item()
                insertion[i, k] = torch.softmax(model(inserted[None]), 1)[0, targets[i]].item()
    return deletion, insertion


def test_deletion_and_insertion_follow_their_definition():
    torch.manual_seed(0)
    images = (_textured(3) + 0.2 * torch.rand(3, 3, 16, 16)).clamp(0, 1)
    maps = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    targets = torch.tensor([1, 1, 0])
    model = Patch().eval()
    d_auc, i_auc, d_curve, i_curve = faithfulness.deletion_insertion(model, images, maps, targets, steps=4,
                                                                     batch_size=2)
    ref_d, ref_i = _reference_curves(model, images, maps, targets, 4)
    assert np.allclose(d_curve, ref_d, atol=1e-6) and np.allclose(i_curve, ref_i, atol=1e-6)
    assert np.allclose(d_auc, np.trapezoid(ref_d, dx=0.25, axis=1), atol=1e-6)
    assert np.allclose(i_auc, np.trapezoid(ref_i, dx=0.25, axis=1), atol=1e-6)


def test_a_map_of_what_the_model_uses_is_more_faithful_than_one_of_elsewhere():
    images = _textured(2)
    targets = torch.tensor([1, 1])
    model = Patch().eval()
    right = np.zeros((2, 16, 16), np.float32)
    right[:, :8, :8] = 1.0
    wrong = np.zeros((2, 16, 16), np.float32)
    wrong[:, 8:, 8:] = 1.0
    good = faithfulness.scores(model, images, right, targets, steps=4)
    bad = faithfulness.scores(model, images, wrong, targets, steps=4)
    assert (good["deletion"] < bad["deletion"]).all()
    assert (good["insertion"] > bad["insertion"]).all()
    assert (good["road"] > bad["road"]).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the library converts tensors with np.float32
def test_road_is_pytorch_grad_cams_road_combined():
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(0)
    images = (_textured(2) + 0.2 * torch.rand(2, 3, 16, 16)).clamp(0, 1)
    maps = np.random.default_rng(2).random((2, 16, 16)).astype(np.float32)
    targets = torch.tensor([1, 0])
    model = Patch().eval()
    ours = faithfulness.road(model, images, maps, targets, steps=5, seed=7)
    torch.manual_seed(7)
    theirs = ROADCombined(percentiles=[20, 40, 60, 80])(images, maps, [ClassifierOutputSoftmaxTarget(1),
                                                                         ClassifierOutputSoftmaxTarget(0)], model)
    assert np.allclose(ours, theirs, atol=1e-6)
    assert faithfulness.road_percentiles(10) == [10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_one_faithfulness_step_is_refused(write_grid, capsys):
    from xaibench.commands.cli import main

    grid = write_grid("datasets: [synthetic]\nbackbones: [resnet18]\nprotocol: {faithfulness_steps: 1}\n")
    assert main(["run", "--grid", str(grid), "--dry-run"]) == 2
    assert "faithfulness_steps is 0 (no faithfulness) or at least 2" in capsys.readouterr().err
