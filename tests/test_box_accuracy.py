"""MaxBoxAccV2 (Choe et al., CVPR 2020) against a plain brute-force computation, its choice of thresholds
on validation, and its chance rows and lift in a tiny run's leaderboard."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from xaibench.commands.cli import main
from xaibench.pipeline import metrics, schema, scoring

LEVELS = (0.3, 0.5, 0.7)


# -- the brute force: loops over thresholds, pixels, components and boxes -------------------------------


def brute_normalise(saliency):
    low, high = saliency.min(), saliency.max()
    return (saliency - low) / (high - low) if high > low else np.zeros_like(saliency)


def brute_boxes(binary):
    """Inclusive (row0, col0, row1, col1) of each 8-connected component of a 2-D bool image."""
    labels, _ = ndimage.label(binary, structure=np.ones((3, 3), bool))
    return [(rows.start, cols.start, rows.stop - 1, cols.stop - 1) for rows, cols in ndimage.find_objects(labels)]


def brute_iou(a, b):
    height = min(a[2], b[2]) - max(a[0], b[0]) + 1
    width = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, height) * max(0, width)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def brute_ious(maps, masks, thresholds=metrics.DEFAULT_SWEEP):
    """Each image's best box IoU at each threshold (None for an image without a mask)."""
    out = []
    for saliency, mask in zip(maps, masks):
        truth = brute_boxes(mask)
        if not truth:
            out.append(None)
            continue
        normalised = brute_normalise(np.asarray(saliency, dtype=np.float64))
        row = []
        for tau in thresholds:
            binary = np.zeros(normalised.shape, bool)
            for r in range(normalised.shape[0]):
                for c in range(normalised.shape[1]):
                    binary[r, c] = normalised[r, c] >= tau
            best = 0.0
            for box in brute_boxes(binary):
                for true_box in truth:
                    best = max(best, brute_iou(box, true_box))
            row.append(best)
        out.append(row)
    return out


def brute_box_acc(ious, level, t):
    scored = [row for row in ious if row is not None]
    return sum(row[t] >= level for row in scored) / len(scored)


def brute_chosen(ious, n_thresholds):
    """Per level, the first threshold position with the highest BoxAcc."""
    chosen = []
    for level in LEVELS:
        accs = [brute_box_acc(ious, level, t) for t in range(n_thresholds)]
        chosen.append(accs.index(max(accs)))
    return chosen


def brute_max_box_acc_v2(ious, n_thresholds):
    return float(np.mean([max(brute_box_acc(ious, level, t) for t in range(n_thresholds)) for level in LEVELS]))


# -- data shaped like tree crowns ----------------------------------------------------------------------


def crowns(rng, n, height=28, width=36):
    """Smooth maps and masks of 1-4 discs (crowns) each, some touching, a few one-pixel crowns, and one
    image without a mask."""
    rows, cols = np.mgrid[:height, :width]
    masks = np.zeros((n, height, width), bool)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 5)):
            r, c, radius = rng.integers(0, height), rng.integers(0, width), rng.uniform(0.5, 6)
            masks[i] |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        if not masks[i].any():
            masks[i, rng.integers(0, height), rng.integers(0, width)] = True
    noise = ndimage.gaussian_filter(rng.random((n, height, width)), sigma=(0, 2.5, 2.5))
    blurred = ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5))
    maps = (rng.uniform(0, 1, (n, 1, 1)) * blurred + noise).astype(np.float32)
    return maps, masks


def edge_cases():
    """(name, map, mask) of the cases a box metric gets wrong first."""
    size = (12, 14)
    two_crowns = np.zeros(size, bool)
    two_crowns[1:8, 1:8] = True  # the large crown
    two_crowns[9:11, 10:12] = True  # the small one, which the map finds exactly
    on_small = np.zeros(size)
    on_small[9:11, 10:12] = 1.0
    one_pixel = np.zeros(size, bool)
    one_pixel[5, 6] = True
    on_pixel = np.zeros(size)
    on_pixel[5, 6] = 1.0
    on_pixel[0, 0] = 0.5  # a second component, below the first only for τ > 0.5
    corner = np.zeros(size, bool)
    corner[0:3, 0:3] = True
    return [("best box matches the smaller crown", on_small, two_crowns),
            ("one-pixel crown and map", on_pixel, one_pixel),
            ("all-zero map", np.zeros(size), two_crowns),
            ("constant map", np.full(size, 0.7), corner),
            ("no mask", on_small, np.zeros(size, bool))]


# -- the metric against the brute force -----------------------------------------------------------------


def test_box_ious_equal_the_brute_force_on_smooth_maps_of_several_crowns():
    maps, masks = crowns(np.random.default_rng(0), 24)
    assert max(len(brute_boxes(m)) for m in masks) >= 3  # several crowns per tile
    expected = brute_ious(maps, masks)
    found = metrics.box_iou_sweep(maps, masks)
    assert np.isnan(found[-1]).all() and expected[-1] is None  # the tile without a mask is left out
    np.testing.assert_array_equal(found[:-1], np.array(expected[:-1]))
    assert 0 < np.mean(found[:-1]) < 1 and len(np.unique(found[:-1])) > 20  # varied, not all 0 or 1
    scores = metrics.explanation_per_image(maps, masks, threshold=0.5)
    mean, excluded = metrics.mean_excluding_nan(scores["max_box_acc"])
    assert excluded == 1
    assert mean == pytest.approx(brute_max_box_acc_v2(expected, len(metrics.DEFAULT_SWEEP)), abs=1e-12)
    # the mask itself as the map (the oracle) finds every crown's box at every threshold
    oracle = metrics.explanation_per_image(masks.astype(np.float32), masks, threshold=0.5)["max_box_acc"]
    assert (oracle[:-1] == 1).all() and np.isnan(oracle[-1])


@pytest.mark.parametrize("name, saliency, mask", edge_cases(), ids=[case[0] for case in edge_cases()])
def test_box_ious_equal_the_brute_force_on_edge_cases(name, saliency, mask):
    thresholds = np.array([0.05, 0.5, 0.75, 1.0, 1.01])  # 1.01: no component above it
    found = metrics.box_iou_sweep(saliency[None], mask[None], thresholds)[0]
    expected = brute_ious(saliency[None], mask[None], thresholds)[0]
    if expected is None:
        assert np.isnan(found).all()
        return
    np.testing.assert_array_equal(found, expected)
    assert found[-1] == 0.0  # nothing reaches τ: IoU 0
    if name in ("best box matches the smaller crown", "one-pixel crown and map"):
        assert found[1] == found[3] == 1.0
    if name == "one-pixel crown and map":
        assert found[0] == 1.0  # two components at τ = 0.05: the best box is kept, not the largest
    if name in ("all-zero map", "constant map"):
        assert (found == 0).all()


def _low_and_high(n_low, n_high, size=16):
    """Tiles whose box is right only at low thresholds (a 6×6 crown, the map 0.2 on it and 1 at its centre)
    and tiles whose box is right only at high ones (a 2×2 crown, the map 1 on it in a 0.3 halo of 8×8)."""
    maps, masks = np.zeros((n_low + n_high, size, size)), np.zeros((n_low + n_high, size, size), bool)
    maps[:n_low, 4:10, 4:10], maps[:n_low, 6:8, 6:8], masks[:n_low, 4:10, 4:10] = 0.2, 1.0, True
    maps[n_low:, 3:11, 3:11], maps[n_low:, 6:8, 6:8], masks[n_low:, 6:8, 6:8] = 0.3, 1.0, True
    return maps, masks


def test_max_box_acc_chooses_each_level_s_threshold_over_the_whole_set_not_chunk_by_chunk():
    maps, masks = _low_and_high(3, 5)
    whole = metrics.explanation_per_image(maps, masks, threshold=0.5)
    # the whole set's best threshold is a high one, at which the three low tiles miss at every level
    np.testing.assert_array_equal(whole["max_box_acc"], [0, 0, 0, 1, 1, 1, 1, 1])
    chosen = brute_chosen(brute_ious(maps, masks), len(metrics.DEFAULT_SWEEP))
    assert chosen == [6] * 3 and metrics.DEFAULT_SWEEP[6] == pytest.approx(0.35)
    chunked, sweeps = metrics.explanation_set([(maps[:3], masks[:3]), (maps[3:], masks[3:])], threshold=0.5)
    np.testing.assert_array_equal(chunked["max_box_acc"], whole["max_box_acc"])
    np.testing.assert_array_equal(sweeps.box, metrics.box_iou_sweep(maps, masks))
    assert metrics.box_thresholds(sweeps.box).tolist() == chosen
    # chosen chunk by chunk, each chunk would get its own threshold and score 1 everywhere
    assert (metrics.max_box_accuracy(sweeps.box[:3]) == 1).all()


def test_the_threshold_of_each_level_is_chosen_on_validation_only():
    val_maps, val_masks = crowns(np.random.default_rng(2), 20)
    test_maps, test_masks = crowns(np.random.default_rng(3), 16)
    test_box = metrics.box_iou_sweep(test_maps, test_masks)
    explained = {"index": np.arange(len(val_maps)), "maps": val_maps}
    taus, per_image = scoring.validation_box_thresholds(explained, {"references": val_masks}, test_box)
    chosen = brute_chosen(brute_ious(val_maps, val_masks), len(metrics.DEFAULT_SWEEP))
    np.testing.assert_allclose(taus, metrics.DEFAULT_SWEEP[chosen])
    test_ious = brute_ious(test_maps, test_masks)
    expected = np.mean([brute_box_acc(test_ious, level, t) for level, t in zip(LEVELS, chosen)])
    assert np.nanmean(per_image) == pytest.approx(expected, abs=1e-12)
    # scrambling the test maps changes the test scores, never the thresholds chosen
    scrambled = metrics.box_iou_sweep(test_maps[::-1].copy(), test_masks)
    assert np.array_equal(scoring.validation_box_thresholds(explained, {"references": val_masks}, scrambled)[0], taus)
    # without a val image with a mask there is nothing to choose
    none = scoring.validation_box_thresholds({"index": np.zeros(0, int), "maps": val_maps[:0]},
                                             {"references": val_masks}, test_box)
    assert np.isnan(none[0]).all() and np.isnan(none[1]).all()


def test_component_boxes_are_those_of_opencv_s_outer_contours():
    """wsolevaluation boxes the contours of cv2.findContours; each component's outer contour has its box."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(4)
    planes = ndimage.gaussian_filter(rng.random((6, 30, 33)), sigma=(0, 1.5, 1.5)) > 0.5
    planes[0, 10:20, 10:20] = True
    planes[0, 13:17, 13:17] = False
    planes[0, 14, 14] = True  # a component inside another one's hole
    plane, boxes = metrics.component_boxes(planes)
    for i, binary in enumerate(planes):
        contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        outer = [cv2.boundingRect(c) for c, h in zip(contours, hierarchy[0]) if h[3] == -1]
        expected = sorted((y, x, y + h - 1, x + w - 1) for x, y, w, h in outer)
        assert sorted(map(tuple, boxes[plane == i].tolist())) == expected


# -- in a run's leaderboard --------------------------------------------------------------------------------

GRID = """\
name: tiny-boxes
seeds: [0]
datasets:
  - name: synthetic
    n_train: 16
    n_val: 8
    n_test: 8
    image_size: 32
backbones: [resnet18]
explainers: [gradcam]
train: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


def test_a_run_reports_max_box_acc_with_chance_rows_lift_and_thresholds_chosen_on_validation(
        registry, write_grid, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    row = table.iloc[0]
    columns = ["max_box_acc", "random_max_box_acc", "centre_max_box_acc", "lift_max_box_acc",
               "max_box_acc_val_tau", *schema.BOX_TAU_COLUMNS]
    assert set(columns) <= set(table.columns) and row[columns].notna().all()
    assert all(0 <= row[c] <= 1 for c in columns if c != "lift_max_box_acc")
    assert row["lift_max_box_acc"] == pytest.approx(row["max_box_acc"] - row["random_max_box_acc"])
    assert all(row[c] in metrics.DEFAULT_SWEEP for c in schema.BOX_TAU_COLUMNS)
    summary = pd.read_csv(out / "leaderboard_summary.csv")
    assert summary[["max_box_acc_ci_low", "lift_max_box_acc_ci_high", "max_box_acc_val_tau_ci_low"]].notna().all().all()
    markdown = (out / "leaderboard.md").read_text()
    metrics_table = markdown.split("#### Explanation metrics · gradcam")[1].split("####")[0]
    header = metrics_table.strip().splitlines()[0]
    assert "max_box_acc" in header and "max_box_acc_val_tau" in header
    assert "MaxBoxAccV2 τ (IoU 0.3 / 0.5 / 0.7) = " in markdown
    lift_table = markdown.split("#### Lift over the random map · gradcam")[1].split("####")[0]
    assert "lift_max_box_acc" in lift_table
    assert main(["leaderboard", str(out), "--format", "latex", "--output", str(tmp_path / "board.tex")]) == 0
    latex = (tmp_path / "board.tex").read_text()
    assert "MaxBoxAccV2 (threshold per IoU level chosen on test)" in latex and "Chance: random" in latex
    assert json.loads((out / "run.json").read_text())["cells_done"] == 1
