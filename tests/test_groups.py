"""Groups of test samples: the contract, the synthetic cue groups, per-group and worst-group accuracy with
their intervals, and the leaderboard's table."""

import numpy as np
import pandas as pd
import pytest

from xaibench.errors import ContractViolation
from xaibench.kit.contracts import Sample, validate_sample
from xaibench.pipeline import results, stats
from xaibench.pipeline.store import save_arrays
from xaibench.presentation import leaderboard
from xaibench_plugins.synthetic import ALIGNED, CONFLICTING, SyntheticDataset


def test_a_group_is_none_or_a_non_empty_string():
    image = np.zeros((4, 4, 3), np.uint8)
    validate_sample(Sample("a", image, 0, None, group="north"), 2)
    validate_sample(Sample("a", image, 0, None), 2)
    for bad in ("", 3, ["north"]):
        with pytest.raises(ContractViolation, match="group"):
            validate_sample(Sample("a", image, 0, None, group=bad), 2)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_synthetic_groups_say_whether_the_cue_agrees_with_the_label(task):
    dataset = SyntheticDataset(task=task, num_classes=3, n_train=30, n_val=6, n_test=30, image_size=32, spurious=0.9)
    for split in ("train", "test"):
        samples, cues = dataset.split(split), dataset.cues(split)
        groups = [s.group for s in samples]
        assert groups == [ALIGNED if c == s.label else CONFLICTING for s, c in zip(samples, cues)]
    test_groups = [s.group for s in dataset.split("test")]
    # in test the cue is independent of the label: about 1/K agree
    assert 0 < test_groups.count(ALIGNED) < len(test_groups) and CONFLICTING in test_groups
    train_groups = [s.group for s in dataset.split("train")]
    assert train_groups.count(ALIGNED) > 0.8 * len(train_groups)


def test_worst_group_is_the_seed_mean_of_each_seeds_lowest_group():
    correct = np.array([[1, 1, 1, 0, 1, 0],   # seed 0: a 3/3, b 1/3
                        [1, 0, 1, 1, 1, 1]])  # seed 1: a 2/3, b 3/3
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert stats.worst_group(correct, groups) == pytest.approx((1 / 3 + 2 / 3) / 2)
    low, high = stats.bootstrap_worst_group_ci(correct, groups)
    assert 0 <= low <= high <= 1
    # with no spread inside each group the interval has no width
    constant = np.array([[1, 1, 0, 0]])
    assert stats.bootstrap_worst_group_ci(constant, np.array(["a", "a", "b", "b"])) == (0.0, 0.0)
    assert np.isnan(stats.worst_group(correct, np.array([""] * 6)))


def test_the_leaderboard_reports_each_group_and_the_worst(tmp_path):
    groups = np.array([ALIGNED] * 6 + [CONFLICTING] * 4)
    correct = {"baseline": [1, 1, 1, 1, 1, 1, 0, 0, 0, 1], "white": [1, 1, 1, 1, 1, 0, 1, 1, 1, 0]}
    rows, files = [], {}
    for variant, values in correct.items():
        cell_id = variant
        rows.append({"cell_id": cell_id, "dataset": "synthetic", "backbone": "resnet18", "seed": 0,
                     "mask": "none" if variant == "baseline" else "white",
                     "ensemble": "baseline" if variant == "baseline" else "logit-mix(alpha=0.5)",
                     "alpha": 1.0 if variant == "baseline" else 0.5, "explainer": "", "seeder": "",
                     "segmenter": "", "status": "done"})
        files[cell_id] = tmp_path / f"{cell_id}.npz"
        save_arrays(files[cell_id], correct=np.array(values, bool), ids=np.arange(10).astype(str), group=groups)
    df = results.frame(rows)
    summary = results.summarise(df, files).set_index("mask")
    base = summary.loc["none"]
    assert base[f"accuracy[{ALIGNED}]"] == pytest.approx(1.0)
    assert base[f"accuracy[{CONFLICTING}]"] == pytest.approx(0.25)
    assert base["worst_group_accuracy"] == pytest.approx(0.25)
    assert summary.loc["white", "worst_group_accuracy"] == pytest.approx(0.75)
    assert base["worst_group_accuracy_ci_low"] <= 0.25 <= base["worst_group_accuracy_ci_high"]
    text = leaderboard.markdown(df, results.summarise(df, files))
    assert "### Accuracy (%) by test group, and the worst group's" in text
    assert f"| mask | ensemble | all | {ALIGNED} (n=6) | {CONFLICTING} (n=4) | worst group |" in text
    assert "| none | Baseline | 70.00 [" in text and "| 25.00 [" in text


def test_no_group_table_without_groups(tmp_path):
    save_arrays(tmp_path / "c.npz", correct=np.array([1, 0], bool), ids=np.array(["a", "b"]))
    df = results.frame([{"cell_id": "c", "dataset": "d", "backbone": "b", "seed": 0, "mask": "none",
                             "ensemble": "baseline", "alpha": 1.0, "explainer": "", "seeder": "", "segmenter": "",
                             "status": "done"}])
    summary = results.summarise(df, {"c": tmp_path / "c.npz"})
    assert "worst_group_accuracy" not in summary or summary["worst_group_accuracy"].isna().all()
    assert "by test group" not in leaderboard.markdown(df, summary)
    assert pd.isna(summary.iloc[0].get("worst_group_accuracy"))
