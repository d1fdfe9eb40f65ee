"""Annotation noise on hand-made masks: each mode does what its name promises, and nothing else."""

import numpy as np
import pydantic
import pytest
from scipy import ndimage

from xaibench_plugins.annotation_noise import MODES, AnnotationNoise, choose_degraded, degrade

SHAPE = (64, 64)


def disc(centre, radius, shape=SHAPE) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def parts(mask: np.ndarray) -> int:
    return ndimage.label(mask, structure=np.ones((3, 3)))[1]


def noisy(mask, seed=0, **settings) -> np.ndarray:
    return degrade(mask, AnnotationNoise(**settings), np.random.default_rng(seed))


# Four parts of distinct sizes: the largest is the disc at (16, 16).
FOUR_PARTS = disc((16, 16), 9) | disc((16, 48), 6) | disc((48, 16), 4) | disc((48, 48), 2)
PART_CENTRES = [(16, 16), (16, 48), (48, 16), (48, 48)]


# -- settings ----------------------------------------------------------------------------------------------


def test_defaults_mean_no_noise_and_every_mode_alone_is_active():
    assert not AnnotationNoise().active
    assert np.array_equal(noisy(FOUR_PARTS), FOUR_PARTS)
    for mode in MODES:
        assert AnnotationNoise(**{mode: 0.5}).active
        assert not AnnotationNoise(**{mode: 0.5}, fraction=0).active


@pytest.mark.parametrize("bad", [{"dilate": -1}, {"erode": -0.5}, {"coarse": -2}, {"shift": -1},
                                 {"missing": 1.5}, {"missing": -0.1}, {"fraction": 1.01}, {"dilate": "wide"}])
def test_out_of_range_settings_are_rejected(bad):
    with pytest.raises(pydantic.ValidationError, match=next(iter(bad))):
        AnnotationNoise(**bad)


def test_an_unknown_setting_is_named_with_the_closest_one():
    with pytest.raises(pydantic.ValidationError, match=r"unknown setting 'dilation' \(did you mean 'dilate'\?\)"):
        AnnotationNoise.model_validate({"dilation": 2})


def test_the_input_mask_is_left_unchanged_and_an_empty_mask_stays_empty():
    before = FOUR_PARTS.copy()
    out = noisy(FOUR_PARTS, missing=0.5, erode=1, dilate=2, coarse=2, shift=3)
    assert np.array_equal(FOUR_PARTS, before) and out is not FOUR_PARTS
    assert out.dtype == bool and out.shape == SHAPE
    assert not noisy(np.zeros(SHAPE, bool), dilate=3, shift=3).any()


# -- the modes ---------------------------------------------------------------------------------------------


def test_dilate_grows_by_a_disc_of_the_radius():
    point = np.zeros(SHAPE, bool)
    point[30, 30] = True
    assert np.array_equal(noisy(point, dilate=2), disc((30, 30), 2))  # 13 pixels: the disc, not a square
    grown = noisy(FOUR_PARTS, dilate=3)
    assert (grown & FOUR_PARTS).sum() == FOUR_PARTS.sum() and grown.sum() > FOUR_PARTS.sum()
    assert np.array_equal(grown, ndimage.binary_dilation(FOUR_PARTS, disc((3, 3), 3, (7, 7))))


def test_erode_shrinks_inside_the_mask_and_never_erases_a_part():
    shrunk = noisy(FOUR_PARTS, erode=3)
    assert not (shrunk & ~FOUR_PARTS).any() and shrunk.sum() < FOUR_PARTS.sum()
    assert np.array_equal(shrunk & disc((16, 16), 12), disc((16, 16), 6))  # the large disc loses 3 pixels
    assert np.array_equal(shrunk & disc((48, 48), 3), disc((48, 48), 2))  # the small one would vanish: kept
    assert parts(shrunk) == 4


def test_erode_does_not_treat_the_tile_edge_as_an_outline():
    edge = np.zeros(SHAPE, bool)
    edge[:, :10] = True  # an object cut by the left edge of the tile
    shrunk = noisy(edge, erode=3)
    assert shrunk[:, :7].all() and not shrunk[:, 7:].any()


def test_missing_drops_each_part_but_the_largest_with_the_probability():
    kept = np.array([[noisy(FOUR_PARTS, seed, missing=0.4)[centre] for centre in PART_CENTRES]
                     for seed in range(400)])
    assert kept[:, 0].all()  # the largest part always stays
    assert kept[:, 1:].mean(axis=0) == pytest.approx([0.6] * 3, abs=0.08)
    assert not kept[:, 1:].all() and kept[:, 1:].any(axis=0).all()
    only_largest = noisy(FOUR_PARTS, missing=1.0)
    assert np.array_equal(only_largest, disc((16, 16), 9))


def test_a_larger_missing_probability_only_drops_more_parts():
    for seed in range(50):
        some, more = noisy(FOUR_PARTS, seed, missing=0.3), noisy(FOUR_PARTS, seed, missing=0.7)
        assert not (more & ~some).any()


def test_missing_counts_diagonal_neighbours_as_one_part():
    diagonal = np.zeros(SHAPE, bool)
    diagonal[np.arange(10, 30), np.arange(10, 30)] = True  # one 8-connected line
    diagonal |= disc((50, 50), 5)  # larger
    left = [noisy(diagonal, seed, missing=0.5)[10:30, 10:30].sum() for seed in range(40)]
    assert set(left) == {0, 20}  # the line goes or stays whole


def test_coarse_is_a_simplified_polygon_close_to_the_outline():
    smooth = disc((32, 32), 20)
    for tolerance, (low, high) in ((0.5, (0.95, 1.0)), (2.0, (0.85, 0.98))):
        coarse = noisy(smooth, coarse=tolerance)
        assert low <= iou(coarse, smooth) <= high
    assert iou(noisy(smooth, coarse=8), smooth) < iou(noisy(smooth, coarse=2), smooth) < iou(
        noisy(smooth, coarse=1), smooth)
    # Corners on the outline: on a convex part the polygon's edges cut inside it, so the part shrinks.
    coarse = noisy(smooth, coarse=3)
    assert (coarse & ~smooth).sum() <= 0.01 * smooth.sum() < 0.05 * smooth.sum() <= (smooth & ~coarse).sum()


def test_coarse_smooths_a_ragged_outline_and_fills_holes():
    rows, cols = np.mgrid[0:64, 0:64]
    angle = np.arctan2(rows - 32, cols - 32)
    ragged = np.hypot(rows - 32, cols - 32) <= 18 + 2 * (np.cos(24 * angle) > 0)  # 12 teeth, 2 pixels deep
    ring = ragged & ~disc((32, 32), 6)
    coarse = noisy(ring, coarse=3)
    assert coarse[disc((32, 32), 6)].all()  # the hole is filled

    def boundary(mask):
        return (mask & ~ndimage.binary_erosion(mask)).sum()

    assert boundary(coarse) < 0.8 * boundary(ragged)
    assert 0.8 <= iou(coarse, ragged) < 1


def test_coarse_outlines_diagonal_neighbours_as_one_part():
    corners = np.zeros(SHAPE, bool)
    corners[10:20, 10:20] = corners[20:28, 20:28] = True  # two squares touching at a corner: one part
    coarse = noisy(corners, coarse=1)
    assert coarse[12:18, 12:18].all() and coarse[22:26, 22:26].all()
    assert iou(coarse, corners) > 0.85


def test_coarse_keeps_a_part_too_small_for_a_polygon():
    speck = np.zeros(SHAPE, bool)
    speck[5, 5] = True
    assert np.array_equal(noisy(speck | disc((40, 40), 10), coarse=3) & (np.arange(64)[:, None] < 20), speck)


def test_shift_translates_by_at_most_the_offset_in_every_direction():
    centre = disc((32, 32), 8)
    moves = []
    for seed in range(300):
        shifted = noisy(centre, seed, shift=6)
        move = np.round(centroid(shifted) - centroid(centre)).astype(int)
        assert np.array_equal(shifted, np.roll(centre, move, axis=(0, 1)))  # the same shape, moved
        moves.append(move)
    moves = np.array(moves)
    lengths = np.hypot(*moves.T)
    assert lengths.max() <= 6 + 0.5 * np.sqrt(2)  # rounded to whole pixels
    assert np.mean(lengths) == pytest.approx(3, abs=0.4)  # uniform in [0, 6]
    assert {tuple(np.sign(m)) for m in moves} >= {(1, 1), (1, -1), (-1, 1), (-1, -1)}


def test_shift_drops_what_leaves_the_tile_and_never_everything():
    edge = np.zeros(SHAPE, bool)
    edge[20:30, :4] = True
    areas = {noisy(edge, seed, shift=3).sum() for seed in range(60)}
    assert min(areas) < edge.sum() and max(areas) == edge.sum()
    corner = np.zeros(SHAPE, bool)
    corner[0, 0] = True
    assert all(noisy(corner, seed, shift=10).sum() == 1 for seed in range(40))


def test_modes_are_applied_in_order_on_paired_draws():
    # The shift vector does not depend on the other modes: dilating first moves the same way.
    for seed in range(20):
        moved = centroid(noisy(FOUR_PARTS, seed, shift=4)) - centroid(FOUR_PARTS)
        grown = noisy(FOUR_PARTS, seed, dilate=2)
        moved_grown = centroid(noisy(FOUR_PARTS, seed, dilate=2, shift=4)) - centroid(grown)
        assert np.allclose(moved, moved_grown)
    # Nor on whether parts went missing: the one part of a disc always stays, and it moves as it would alone.
    single = disc((32, 32), 8)
    for seed in range(20):
        assert np.array_equal(noisy(single, seed, missing=0.5, shift=4), noisy(single, seed, shift=4))
    # erode before dilate: an opening, which removes a one-pixel spur dilate-then-erode would keep.
    spur = disc((32, 32), 10)
    spur[32, 42:55] = True
    opened = noisy(spur, erode=1, dilate=1)
    assert not opened[32, 46:55].any()


# -- determinism and choosing ------------------------------------------------------------------------------


def test_the_same_generator_gives_the_same_annotation():
    settings = dict(missing=0.5, erode=1, dilate=2, coarse=2, shift=4)
    outputs = [noisy(FOUR_PARTS, seed, **settings).tobytes() for seed in (7, 7, 8, 9, 10)]
    assert outputs[0] == outputs[1]
    assert len(set(outputs)) >= 3


@pytest.mark.parametrize("count", [0, 1, 7, 120])
def test_choose_degraded_picks_exactly_the_share_nested_by_fraction(count):
    chosen = {fraction: choose_degraded(count, fraction, np.random.default_rng(3))
              for fraction in (0.0, 0.25, 0.5, 1.0)}
    for fraction, picked in chosen.items():
        assert picked.dtype == bool and picked.shape == (count,)
        assert picked.sum() == int(np.floor(fraction * count + 0.5))
    assert not (chosen[0.25] & ~chosen[0.5]).any()
    if count == 120:
        assert not np.array_equal(chosen[0.5], np.arange(120) < 60)  # shuffled, not the first half
        other = choose_degraded(count, 0.5, np.random.default_rng(4))
        assert not np.array_equal(chosen[0.5], other)
