"""Explanation and segmentation metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from xaibench.pipeline import metrics


def grid(*rows):
    """A (1, H, W) float map from rows of numbers."""
    return np.array([rows], dtype=np.float64)


def mask(*rows):
    """A (1, H, W) bool mask from strings of '#' (inside) and '.' (outside)."""
    return np.array([[[c == "#" for c in row] for row in rows]])


# A 4x4 map with distinct values 0..15 (raster order) and a 2x2 mask in its top-right corner.
RAMP = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
CORNER = mask("..##", "..##", "....", "....")  # values 2, 3, 6, 7
EMPTY = mask("....", "....", "....", "....")
FULL = mask("####", "####", "####", "####")


def test_dice_on_hand_computed_masks():
    pred = mask("##..", "##..", "....", "....")  # 4 pixels
    truth = mask("###.", "###.", "....", "....")  # 6 pixels, 4 shared
    assert metrics.dice(pred, truth)[0] == pytest.approx(2 * 4 / (4 + 6))
    assert np.isnan(metrics.dice(pred, EMPTY)[0])
    assert metrics.dice(EMPTY, truth)[0] == 0.0


@pytest.mark.parametrize(
    "fn",
    [metrics.dice, metrics.roc_auc, metrics.average_precision, metrics.pointing_game, metrics.relevance_mass,
     metrics.relevance_rank, metrics.boundary_f1, metrics.threshold_sweep,
     lambda a, b: metrics.top_k_intersection(a, b, 1),
     lambda a, b: metrics.explanation_per_image(a, b, threshold=0.5), metrics.segmentation_per_image],
)
def test_shape_mismatch_is_an_error(fn):
    with pytest.raises(ValueError, match="differs"):
        fn(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))


def test_fixed_binarisation_normalises_first():
    assert metrics.binarise(RAMP * 3 + 7, 0.5)[0].ravel().tolist() == [v >= 7.5 for v in range(16)]


def test_top_percent_keeps_exactly_that_many_pixels():
    top = metrics.binarise_top_percent(RAMP, 25)  # 4 of 16 pixels: values 12..15
    assert top[0].ravel().tolist() == [v >= 12 for v in range(16)]
    # 20 % of 16 pixels is 3.2 -> 3; on a constant map the tie goes in raster order.
    flat = metrics.binarise_top_percent(np.ones((1, 4, 4)), 20)
    assert flat[0].ravel().tolist() == [True] * 3 + [False] * 13
    assert not metrics.binarise_top_percent(RAMP, 0).any() and metrics.binarise_top_percent(RAMP, 100).all()
    with pytest.raises(ValueError, match="percentage"):
        metrics.binarise_top_percent(RAMP, 120)


def test_otsu_splits_two_levels_and_gives_nothing_on_a_constant_map():
    two_levels = grid([0.1, 0.1, 0.9], [0.1, 0.9, 0.9])
    assert metrics.binarise_otsu(two_levels)[0].tolist() == [[False, False, True], [False, True, True]]
    assert not metrics.binarise_otsu(np.full((1, 3, 3), 0.4)).any()


def test_threshold_sweep_curve_best_and_mean():
    # Normalised values 0, 1/3, 2/3, 1 in a row; the mask holds the two highest.
    maps = grid([0.0, 1.0, 2.0, 3.0])
    truth = mask("..##")
    curve, best_t, best, curve_mean = metrics.threshold_sweep(maps, truth, thresholds=[0.2, 0.5, 0.9])
    # t=0.2 keeps 3 pixels (IoU 2/3), t=0.5 keeps the 2 right ones (1), t=0.9 keeps 1 (1/2).
    np.testing.assert_allclose(curve, [2 / 3, 1.0, 0.5])
    assert (best_t, best) == (0.5, 1.0)
    assert curve_mean == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    # Empty masks are left out of each mean; with only empty masks everything is NaN.
    both = np.concatenate([maps, maps])
    np.testing.assert_allclose(metrics.threshold_sweep(both, np.concatenate([truth, mask("....")]), [0.5])[0], [1.0])
    curve, best_t, best, curve_mean = metrics.threshold_sweep(maps, mask("...."))
    assert curve.shape == (19,) and np.isnan([best_t, best, curve_mean]).all()


def test_roc_auc_and_average_precision_by_hand():
    # Scores 0, 1, 2, 3 for pixels labelled in, out, in, out.
    maps, truth = grid([0.0, 1.0, 2.0, 3.0]), mask("#.#.")
    # Of the 4 (in, out) pairs the in-pixel ranks higher only in (2, 1): AUC 1/4.
    assert metrics.roc_auc(maps, truth)[0] == pytest.approx(0.25)
    # Ranked 3(out) 2(in) 1(out) 0(in): precision at the hits 1/2 and 2/4, AP = (1/2 + 1/2) / 2.
    assert metrics.average_precision(maps, truth)[0] == pytest.approx(0.5)
    assert metrics.roc_auc(RAMP, CORNER)[0] == pytest.approx((2 + 2 + 4 + 4) / (4 * 12))
    for fn in (metrics.roc_auc, metrics.average_precision):
        assert np.isnan(fn(RAMP, EMPTY)[0]) and np.isnan(fn(RAMP, FULL)[0])
    assert metrics.roc_auc(np.ones((1, 4, 4)), CORNER)[0] == 0.5  # a constant map is chance


def test_pointing_game_hits_misses_and_ties():
    assert metrics.pointing_game(RAMP, mask("....", "....", "....", "...#")).tolist() == [1.0]
    assert metrics.pointing_game(RAMP, CORNER).tolist() == [0.0]
    assert np.isnan(metrics.pointing_game(RAMP, EMPTY)[0])
    # Two pixels share the maximum, one of them inside: half a hit. A constant map scores the area share.
    assert metrics.pointing_game(grid([1.0, 0.0, 1.0]), mask("#..")).tolist() == [0.5]
    assert metrics.pointing_game(np.zeros((1, 4, 4)), CORNER).tolist() == [4 / 16]


def test_relevance_mass_is_the_share_of_normalised_saliency_inside():
    # Normalised RAMP is v / 15; inside values 2 + 3 + 6 + 7 = 18 of a total 120.
    assert metrics.relevance_mass(RAMP, CORNER)[0] == pytest.approx(18 / 120)
    assert metrics.relevance_mass(CORNER.astype(float), CORNER)[0] == 1.0
    assert metrics.relevance_mass(np.full((1, 4, 4), 3.0), CORNER)[0] == 0.0
    assert np.isnan(metrics.relevance_mass(RAMP, EMPTY)[0])


def test_relevance_rank_and_top_k_intersection():
    # |G| = 4: the top 4 pixels are 12..15, none inside the corner.
    assert metrics.relevance_rank(RAMP, CORNER)[0] == 0.0
    bottom_right = mask("....", "....", "..##", "..##")  # values 10, 11, 14, 15
    assert metrics.relevance_rank(RAMP, bottom_right)[0] == pytest.approx(2 / 4)
    assert np.isnan(metrics.relevance_rank(RAMP, EMPTY)[0])
    # The 3 most salient pixels are 13, 14, 15; two are inside.
    assert metrics.top_k_intersection(RAMP, bottom_right, 3)[0] == pytest.approx(2 / 3)
    assert metrics.top_k_intersection(RAMP, bottom_right, 16)[0] == pytest.approx(4 / 16)
    # A constant map: every pick is a tie, so the expected share is the mask's area fraction.
    assert metrics.top_k_intersection(np.zeros((1, 4, 4)), bottom_right, 5)[0] == pytest.approx(4 / 16)
    assert np.isnan(metrics.top_k_intersection(RAMP, EMPTY, 2)[0])
    with pytest.raises(ValueError, match="k"):
        metrics.top_k_intersection(RAMP, CORNER, 17)


def test_boundary_f1_by_hand():
    truth = np.zeros((1, 12, 12), bool)
    truth[0, 2:8, 2:8] = True  # a 6x6 square: 20 boundary pixels
    assert metrics.boundary_f1(truth, truth)[0] == 1.0
    shifted = np.roll(truth, 1, axis=2)  # every boundary pixel within 1 px of the other's
    assert metrics.boundary_f1(shifted, truth, tolerance=1)[0] == 1.0
    far = np.roll(truth, 3, axis=2)
    # Shifted 3 columns, at tolerance 1: of the prediction's top and bottom edges (columns 5..10), columns
    # 5..7 lie on the truth's edges and column 8 is 1 px from them: 2 * 4; of its left side (column 5,
    # rows 3..6) the end pixels are 1 px from the truth's top and bottom edges: 2; its right side is
    # 3 px away. So precision = 10 / 20, and by symmetry recall too.
    assert metrics.boundary_f1(far, truth, tolerance=1)[0] == pytest.approx(10 / 20)
    small = np.zeros((1, 12, 12), bool)
    small[0, 4, 4] = True  # one pixel inside, 2 px from the truth's edge pixels (2, 4) and (4, 2)
    assert metrics.boundary_f1(small, truth, tolerance=1)[0] == 0.0
    # At tolerance 2: precision 1, recall 2 / 20.
    assert metrics.boundary_f1(small, truth, tolerance=2)[0] == pytest.approx(2 * 1 * (2 / 20) / (1 + 2 / 20))
    assert metrics.boundary_f1(np.zeros_like(truth), truth)[0] == 0.0
    assert np.isnan(metrics.boundary_f1(truth, np.zeros_like(truth))[0])


def test_explanation_scores_means_and_excluded_counts():
    maps = np.concatenate([CORNER.astype(float), RAMP, RAMP])
    truth = np.concatenate([CORNER, CORNER, EMPTY])
    scores = metrics.explanation_summary(metrics.explanation_per_image(maps, truth, threshold=0.5),
                                         metrics.sweep_per_image(maps, truth))
    assert set(scores) == {f"{name}{suffix}" for name in [
        "jaccard", "dice", "jaccard_otsu", "jaccard_top20", "sweep_mean", "sweep_best", "roc_auc",
        "average_precision", "pointing_game", "relevance_mass", "relevance_rank", "max_box_acc"]
        for suffix in ("", "_excluded")}
    assert all(scores[k] == 1 for k in scores if k.endswith("_excluded"))
    # Image 1 is the oracle (1 everywhere); image 2 ranks the corner low: RAMP >= 0.5 is values 8..15.
    assert scores["jaccard"] == pytest.approx((1 + 0) / 2)
    assert scores["dice"] == pytest.approx((1 + 0) / 2)
    assert scores["pointing_game"] == pytest.approx((1 + 0) / 2)
    assert scores["relevance_mass"] == pytest.approx((1 + 18 / 120) / 2)
    assert scores["relevance_rank"] == pytest.approx((1 + 0) / 2)
    assert scores["roc_auc"] == pytest.approx((1 + 12 / 48) / 2)
    # RAMP's top 20 % (3 pixels: 13, 14, 15) misses the corner.
    assert scores["jaccard_top20"] == pytest.approx((3 / 4 + 0) / 2)
    assert scores["sweep_best"] == pytest.approx(metrics.threshold_sweep(maps, truth)[2])


def test_segmentation_scores():
    pred = np.concatenate([CORNER, mask("...#", "...#", "....", "....")])
    truth = np.concatenate([CORNER, CORNER])
    scores = metrics.summary(metrics.segmentation_per_image(pred, truth))
    assert scores["seg_iou"] == pytest.approx((1 + 2 / 4) / 2)
    assert scores["seg_dice"] == pytest.approx((1 + 2 * 2 / 6) / 2)
    assert scores["seg_boundary_f1"] == pytest.approx(1.0)  # within 2 px everywhere on a 4x4 image
    assert scores["seg_iou_excluded"] == scores["seg_dice_excluded"] == scores["seg_boundary_f1_excluded"] == 0
    with_empty = metrics.summary(metrics.segmentation_per_image(np.concatenate([pred, CORNER]),
                                                                np.concatenate([truth, EMPTY])))
    assert with_empty["seg_iou_excluded"] == 1 and with_empty["seg_iou"] == pytest.approx(scores["seg_iou"])


def test_rank_based_auc_and_ap_equal_sklearn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from xaibench.pipeline.metrics import average_precision, normalise, roc_auc

    rng = np.random.default_rng(0)
    maps = np.round(rng.random((4, 12, 10)), 1)  # coarse values: many ties
    masks = rng.random((4, 12, 10)) < 0.3
    normalised = normalise(maps)
    expected_auc = [roc_auc_score(m.ravel(), s.ravel()) for s, m in zip(normalised, masks)]
    expected_ap = [average_precision_score(m.ravel(), s.ravel()) for s, m in zip(normalised, masks)]
    assert np.allclose(roc_auc(maps, masks), expected_auc)
    assert np.allclose(average_precision(maps, masks), expected_ap)


def test_auc_and_ap_equal_sklearn_on_float_maps_with_a_large_offset():
    """Min-max scaling is computed in float64: a map of fine float64 values far from zero keeps every
    distinct value distinct, so the ranking metrics are sklearn's on the raw map."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from xaibench.pipeline.metrics import average_precision, normalise, roc_auc

    rng = np.random.default_rng(1)
    masks = rng.random((5, 24, 20)) < 0.3
    maps = 1000.0 + rng.random((5, 24, 20)) * 1e-3 + masks * 2e-4  # informative, distinct, large offset
    expected_auc = [roc_auc_score(m.ravel(), s.ravel()) for s, m in zip(maps, masks)]
    expected_ap = [average_precision_score(m.ravel(), s.ravel()) for s, m in zip(maps, masks)]
    np.testing.assert_allclose(roc_auc(maps, masks), expected_auc, rtol=0, atol=1e-9)
    np.testing.assert_allclose(average_precision(maps, masks), expected_ap, rtol=0, atol=1e-9)
    assert normalise(maps).dtype == np.float64
