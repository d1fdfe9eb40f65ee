"""Behaviour of the built-in seeders (``top-k``, ``components``, ``pos-neg``) and segmenters
(``random-walker``, ``watershed``, ``grabcut``, ``sam``, ``cam-threshold``), and the contract every
registered seeder and segmenter keeps.

SAM runs as a tiny randomly initialised model built from segment_anything's own modules, so the
tests exercise the real predictor (resizing, coordinate transform, mask decoding) without weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Prompts, capability, validate_prompt_sets
from xaibench.kit.registry import Registry
from xaibench_plugins import sam, seeders, segmenters
from xaibench_plugins.sam import SamSegmenter
from xaibench_plugins.segmenters import BACKGROUND, FOREGROUND, UNLABELLED, seed_markers

CLASSICAL_SEGMENTERS = ["random-walker", "watershed", "grabcut"]
INSTALLED = Registry()


@pytest.fixture(scope="module")
def registry():
    registry = Registry(load_entry_points=False)
    registry.add_plugin(seeders, name="seeders")
    registry.add_plugin(segmenters, name="segmenters")
    registry.add_plugin(sam, name="sam")
    return registry


def bumps(shape, peaks, sigma=2.0):
    """A map that is the pointwise max of Gaussian bumps ``(row, col, height)`` on zero."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    layers = [h * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)) for r, c, h in peaks]
    return np.maximum.reduce(layers).astype(np.float32)


def points_of(prompts):
    return [tuple(p) for p in prompts.points.tolist()]


def prompts(points, labels=None):
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    labels = np.ones(len(points), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return Prompts(points=points, labels=labels)


NO_PROMPTS = prompts([])


# -- top-k ------------------------------------------------------------------------------------------


def test_top_k_finds_peaks_highest_first_as_column_row(registry):
    # Non-square and off-diagonal, so swapped x/y would land outside the map or on nothing.
    saliency = bumps((40, 60), [(30, 10, 0.7), (5, 50, 1.0), (20, 30, 0.4)])
    found = registry.create("seeders", "top-k", k=3)(saliency)
    assert points_of(found) == [(50, 5), (10, 30), (30, 20)]
    assert found.points.dtype == np.float32
    assert found.labels.dtype == np.int64
    assert found.labels.tolist() == [1, 1, 1]


def test_top_k_skips_peaks_closer_than_min_distance(registry):
    saliency = bumps((40, 60), [(10, 10, 1.0), (10, 16, 0.9), (30, 40, 0.5)], sigma=1.0)
    apart = registry.create("seeders", "top-k", k=2, min_distance=8)(saliency)
    assert points_of(apart) == [(10, 10), (40, 30)]
    close = registry.create("seeders", "top-k", k=2, min_distance=5)(saliency)
    assert points_of(close) == [(10, 10), (16, 10)]


def test_top_k_points_are_min_distance_apart_on_a_noisy_map(registry):
    saliency = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    found = registry.create("seeders", "top-k", k=20, min_distance=9)(saliency)
    assert len(found.points) == 20
    gaps = np.linalg.norm(found.points[:, None] - found.points[None], axis=-1)
    assert gaps[~np.eye(20, dtype=bool)].min() >= 9
    values = saliency[found.points[:, 1].astype(int), found.points[:, 0].astype(int)]
    assert np.all(np.diff(values) <= 0)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [(224, 224), (224, 320)])
def test_top_k_on_an_upsampled_coarse_map_gives_one_point_per_cell(registry, mode, size):
    grid = np.random.default_rng(0).uniform(0.0, 0.5, (7, 7)).astype(np.float32)
    grid[2, 5] = 1.0
    grid[5, 1] = 0.8
    saliency = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=size, mode=mode)
    found = registry.create("seeders", "top-k", k=2)(saliency[0, 0].numpy())
    height, width = size
    for (x, y), (cell_row, cell_col) in zip(found.points, [(2, 5), (5, 1)]):
        assert cell_row * height / 7 <= y < (cell_row + 1) * height / 7
        assert cell_col * width / 7 <= x < (cell_col + 1) * width / 7
        # At the cell's centre, not on a corner of its plateau or a flank of its bump.
        assert abs(y - ((cell_row + 0.5) * height / 7 - 0.5)) <= 1
        assert abs(x - ((cell_col + 0.5) * width / 7 - 0.5)) <= 1


def test_top_k_returns_fewer_points_when_peaks_run_out(registry):
    saliency = bumps((40, 60), [(10, 10, 1.0), (30, 45, 0.3)])
    assert len(registry.create("seeders", "top-k", k=10)(saliency).points) == 2
    assert points_of(registry.create("seeders", "top-k", k=10, min_value=0.5)(saliency)) == [(10, 10)]
    empty = registry.create("seeders", "top-k", k=3)(np.zeros((16, 16), dtype=np.float32))
    assert empty.points.shape == (0, 2) and empty.points.dtype == np.float32
    assert empty.labels.shape == (0,) and empty.labels.dtype == np.int64


def test_top_k_breaks_ties_by_lowest_flat_index_and_is_deterministic(registry):
    saliency = bumps((40, 60), [(30, 5, 1.0), (3, 50, 1.0), (20, 25, 1.0)])
    top_k = registry.create("seeders", "top-k", k=3)
    assert points_of(top_k(saliency)) == [(50, 3), (25, 20), (5, 30)]
    assert points_of(top_k(saliency)) == points_of(top_k(saliency.copy()))


def test_top_k_puts_a_constant_map_point_at_its_centre(registry):
    assert points_of(registry.create("seeders", "top-k", k=3)(np.full((9, 15), 0.5, np.float32))) == [(7, 4)]


def test_top_k_parameters_are_validated(registry):
    with pytest.raises(ComponentParamsError, match="k"):
        registry.create("seeders", "top-k", k=0)
    with pytest.raises(ComponentParamsError, match="min_distance"):
        registry.create("seeders", "top-k", min_distance=-1)


# -- markers and classical segmenters ----------------------------------------------------------------


def test_markers_use_border_ring_with_a_gap_around_positive_points():
    markers = seed_markers((20, 30), prompts([[1, 10], [15, 10]]), seed_radius=2, border=2)
    assert markers[10, 1] == FOREGROUND and markers[10, 15] == FOREGROUND
    assert markers[10, 4] == UNLABELLED  # outside the disc, inside no ring
    assert markers[0, 15] == BACKGROUND and markers[19, 29] == BACKGROUND
    # The ring next to the point at the left edge is left unlabelled up to seed_radius + border.
    assert markers[13, 0] == UNLABELLED and markers[10, 0] == FOREGROUND
    assert markers[15, 0] == BACKGROUND


def test_markers_use_negative_points_instead_of_the_ring():
    markers = seed_markers((20, 30), prompts([[5, 5], [20, 10], [6, 5]], [1, 0, 0]), seed_radius=2, border=2)
    assert markers[10, 20] == BACKGROUND
    assert markers[0, 29] == UNLABELLED  # no ring when negatives are given
    assert markers[5, 5] == FOREGROUND and markers[5, 6] == FOREGROUND  # foreground wins overlaps
    assert markers[5, 8] == BACKGROUND


@pytest.fixture(scope="module")
def disc_image():
    """A red disc on green noise, both textured; returns (image, disc mask, centre as (x, y))."""
    rng = np.random.default_rng(0)
    height, width, centre_row, centre_col = 96, 128, 40, 80
    rows, cols = np.mgrid[:height, :width]
    disc = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= 18**2
    image = rng.normal(0, 25, (height, width, 3)) + np.where(disc[..., None], [200, 60, 60], [90, 120, 80])
    return np.clip(image, 0, 255).astype(np.uint8), disc, (centre_col, centre_row)


@pytest.mark.parametrize("name", CLASSICAL_SEGMENTERS)
def test_classical_segmenter_recovers_a_disc_from_one_point(registry, disc_image, name):
    image, disc, centre = disc_image
    only_negative = prompts([centre], [0])
    masks = registry.create("segmenters", name).segment(image, [prompts([centre]), NO_PROMPTS, only_negative])
    assert len(masks) == 3
    for mask in masks:
        assert mask.dtype == bool and mask.shape == disc.shape
    iou = (masks[0] & disc).sum() / (masks[0] | disc).sum()
    assert iou > 0.8
    assert not masks[1].any() and not masks[2].any()


@pytest.mark.parametrize("name", CLASSICAL_SEGMENTERS)
def test_classical_segmenter_handles_a_constant_image(registry, name):
    image = np.full((24, 32, 3), 7, dtype=np.uint8)
    (mask,) = registry.create("segmenters", name).segment(image, [prompts([[16, 12]])])
    assert mask[12, 16] and not mask[0, 0] and not mask[23, 31]


@pytest.mark.parametrize("name", CLASSICAL_SEGMENTERS)
def test_classical_segmenter_with_no_prompt_sets_returns_no_masks(registry, disc_image, name):
    assert registry.create("segmenters", name).segment(disc_image[0], []) == []


# -- sam ----------------------------------------------------------------------------------------------


def test_sam_without_checkpoint_says_where_to_download(registry, disc_image):
    sam = registry.create("segmenters", "sam")
    with pytest.raises(UserError, match="checkpoint") as error:
        sam.segment(disc_image[0], [prompts([[5, 5]])])
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in str(error.value)


def test_sam_with_missing_checkpoint_names_the_path_and_url(registry, disc_image, tmp_path):
    missing = tmp_path / "sam_vit_h.pth"
    sam = registry.create("segmenters", "sam", checkpoint=str(missing), model_type="vit_h")
    with pytest.raises(UserError) as error:
        sam.segment(disc_image[0], [prompts([[5, 5]])])
    message = str(error.value)
    assert str(missing) in message and "'checkpoint'" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message


def test_sam_parameters_are_validated(registry):
    with pytest.raises(ComponentParamsError, match="model_type"):
        registry.create("segmenters", "sam", model_type="vit_x")
    with pytest.raises(ComponentParamsError, match="multimask"):
        registry.create("segmenters", "sam", multimask="all")


def tiny_sam(img_size: int = 64, dim: int = 32):
    """A randomly initialised SAM with SAM's architecture at toy size (fixed seed, global RNG untouched)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2, out_chans=dim
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=dim,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, num_heads=2, mlp_dim=64),
                num_multimask_outputs=3,
                iou_head_depth=2,
                iou_head_hidden_dim=16,
            ),
        )
    return model.eval()


class TinySam(SamSegmenter):
    """SamSegmenter with the tiny model, recording how often it builds and encodes."""

    def __init__(self, **params):
        super().__init__(device="cpu", **params)
        self.builds = 0
        self.encodings = 0
        self.prompt_encoder_points = []

    def _build_model(self):
        self.builds += 1
        model = tiny_sam()
        model.image_encoder.register_forward_hook(lambda *_: setattr(self, "encodings", self.encodings + 1))

        def spy(module, args, kwargs):
            if kwargs["points"] is not None:
                coords, labels = kwargs["points"]
                self.prompt_encoder_points.append((coords.clone(), labels.clone()))

        model.prompt_encoder.register_forward_pre_hook(spy, with_kwargs=True)
        return model


@pytest.fixture(scope="module")
def wide_image():
    return np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)


def test_sam_returns_one_mask_per_prompt_set_and_encodes_once_per_call(wide_image):
    sam = TinySam()
    prompt_sets = [prompts([[80, 10]]), NO_PROMPTS, prompts([[10, 40], [50, 20]], [1, 0]), prompts([[3, 3]])]
    masks = sam.segment(wide_image, prompt_sets)
    assert len(masks) == 4
    for mask in masks:
        assert mask.dtype == bool and mask.shape == (48, 96)
    assert not masks[1].any()
    assert masks[0].any()  # the tiny model's masks are not trivially empty
    assert sam.encodings == 1
    sam.segment(wide_image, prompt_sets[:2])
    assert sam.encodings == 2
    assert sam.builds == 1


def test_sam_skips_the_encoder_when_no_prompt_set_has_a_positive_point(wide_image):
    sam = TinySam()
    masks = sam.segment(wide_image, [NO_PROMPTS, prompts([[5, 5]], [0])])
    assert [mask.any() for mask in masks] == [False, False]
    assert sam.encodings == 0


def test_sam_gives_points_to_the_model_as_x_y_in_the_resized_frame(wide_image):
    sam = TinySam()
    sam.segment(wide_image, [prompts([[80, 10], [30, 45]], [1, 0])])
    [(coords, labels)] = sam.prompt_encoder_points
    # The 48x96 image is resized so its long side is 64: both axes scale by 64 / 96.
    expected = torch.tensor([[[80 * 64 / 96, 10 * 64 / 96], [30 * 64 / 96, 45 * 64 / 96]]])
    torch.testing.assert_close(coords, expected)
    assert labels.tolist() == [[1, 0]]


def test_sam_multimask_policies_pick_from_sams_candidates(wide_image):
    from segment_anything import SamPredictor

    prompt_set = prompts([[80, 10]])
    predictor = SamPredictor(tiny_sam())
    predictor.set_image(wide_image)
    candidates, scores, _ = predictor.predict(prompt_set.points, prompt_set.labels, multimask_output=True)
    (single,), _, _ = predictor.predict(prompt_set.points, prompt_set.labels, multimask_output=False)

    policies = ["best", "largest", "union", "single"]
    chosen = {policy: TinySam(multimask=policy).segment(wide_image, [prompt_set])[0] for policy in policies}
    np.testing.assert_array_equal(chosen["best"], candidates[np.argmax(scores)])
    np.testing.assert_array_equal(chosen["largest"], candidates[np.argmax(candidates.sum(axis=(1, 2)))])
    np.testing.assert_array_equal(chosen["union"], candidates.any(axis=0))
    np.testing.assert_array_equal(chosen["single"], single)
    assert np.all(chosen["union"] >= chosen["best"])
    assert chosen["union"].sum() > chosen["best"].sum()  # the candidates differ, so the checks bite
    assert chosen["largest"].sum() >= chosen["best"].sum()


def test_sam_is_pickled_without_its_model(wide_image):
    sam = TinySam()
    sam.segment(wide_image, [prompts([[5, 5]])])
    assert sam._model is not None
    assert pickle.loads(pickle.dumps(sam))._model is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sam_on_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA"):
        SamSegmenter(device="cuda")._resolve_device()


# -- components ---------------------------------------------------------------------------------------


def test_components_gives_one_point_per_region_by_saliency_mass(registry):
    saliency = np.zeros((30, 50), np.float32)
    saliency[2:5, 40:46] = 0.6  # 18 px of 0.6: mass 10.8 -> scaled 18 * 0.6 = 10.8
    saliency[20:28, 5:9] = 1.0  # 32 px of 1.0, the largest mass
    saliency[20:28, 7] = 0.8  # pulls the weighted centre left of the geometric one
    saliency[12, 25] = 0.7  # one pixel
    found = registry.create("seeders", "components")(saliency)
    assert found.labels.tolist() == [1, 1, 1] and found.points.dtype == np.float32
    # Block at rows 20..27, columns 5..8: weighted column (5 + 6 + 8 + 0.8 * 7) / 3.8 = 6.47 -> 6.
    assert points_of(found) == [(6, 24), (43, 3), (25, 12)]
    assert points_of(registry.create("seeders", "components", max_points=2)(saliency)) == [(6, 24), (43, 3)]
    assert points_of(registry.create("seeders", "components", threshold=0.65)(saliency)) == [(6, 24), (25, 12)]


def test_components_snaps_a_centre_outside_its_region_inside():
    from xaibench_plugins.seeders import Components

    rows, cols = np.mgrid[:41, :41]
    radius = np.hypot(rows - 20, cols - 20)
    ring = ((radius >= 12) & (radius <= 15)).astype(np.float32)  # its weighted centre is the empty middle
    (point,) = Components()(ring).points
    x, y = int(point[0]), int(point[1])
    assert ring[y, x] == 1.0  # on the ring, not in its empty middle
    assert 12 <= np.hypot(y - 20, x - 20) <= 12.5  # the ring pixel nearest the centre


def test_components_of_a_constant_map_and_of_nan(registry):
    components = registry.create("seeders", "components")
    empty = components(np.full((8, 8), 0.3, np.float32))
    assert empty.points.shape == (0, 2) and empty.points.dtype == np.float32 and empty.labels.dtype == np.int64
    saliency = np.zeros((8, 8), np.float32)
    saliency[2, 3] = 1.0
    saliency[6, 6] = np.nan
    assert points_of(components(saliency)) == [(3, 2)]


@pytest.mark.parametrize("name", ["components", "pos-neg"])
@pytest.mark.parametrize("size", [(224, 224), (224, 320)])
def test_seeders_on_an_upsampled_7x7_map_give_column_row_of_the_right_cells(registry, name, size):
    grid = np.full((7, 7), 0.3, np.float32)
    grid[1, 5] = 1.0  # the hot cell: row 1, column 5
    grid[5, 1] = 0.0  # the cold cell: row 5, column 1
    saliency = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=size, mode="bilinear")
    found = registry.create("seeders", name, **({"k": 1, "negatives": 1} if name == "pos-neg" else {}))(
        saliency[0, 0].numpy())
    height, width = size
    (x, y), = found.positive
    assert abs(y - (1.5 * height / 7 - 0.5)) <= 1 and abs(x - (5.5 * width / 7 - 0.5)) <= 1
    if name == "pos-neg":
        (x, y), = found.negative
        assert abs(y - (5.5 * height / 7 - 0.5)) <= 1 and abs(x - (1.5 * width / 7 - 0.5)) <= 1


# -- pos-neg ------------------------------------------------------------------------------------------


def test_pos_neg_adds_spread_negatives_on_the_least_salient_pixels(registry):
    saliency = bumps((40, 60), [(30, 10, 1.0), (5, 50, 0.7)], sigma=4.0)
    found = registry.create("seeders", "pos-neg", k=2, negatives=4, min_distance=10)(saliency)
    top = registry.create("seeders", "top-k", k=2, min_distance=10)(saliency)
    np.testing.assert_array_equal(found.positive, top.points)
    assert found.labels.tolist() == [1, 1, 0, 0, 0, 0]
    assert found.points.dtype == np.float32 and found.labels.dtype == np.int64
    negatives = found.negative.astype(int)
    # On the flat zero background, the first is the pixel farthest from the positives: a corner.
    assert tuple(negatives[0]) == (59, 39)
    assert all(saliency[y, x] <= 1e-6 for x, y in negatives)
    gaps = np.linalg.norm(found.points[:, None] - found.points[None], axis=-1)
    assert gaps[~np.eye(6, dtype=bool)].min() >= 10


def test_pos_neg_never_puts_a_negative_on_salient_pixels(registry):
    rows, cols = np.mgrid[:20, :20]
    saliency = (0.5 + 0.5 * (cols / 19)).astype(np.float32)  # scaled: column / 19
    pos_neg = registry.create("seeders", "pos-neg", k=1, negatives=10, min_distance=3, max_negative_value=0.2)
    found = pos_neg(saliency)
    assert len(found.negative) > 0
    assert all(x / 19 <= 0.2 for x, _ in found.negative)
    assert len(registry.create("seeders", "pos-neg", negatives=0)(saliency).negative) == 0


# -- grabcut and cam-threshold ------------------------------------------------------------------------


def test_grabcut_is_deterministic_and_respects_definite_background(registry, disc_image):
    image, disc, centre = disc_image
    grabcut = registry.create("segmenters", "grabcut", seed_radius=3)
    inside_negative = prompts([centre, [centre[0] + 10, centre[1]]], [1, 0])
    first = grabcut.segment(image, [prompts([centre]), inside_negative])
    again = grabcut.segment(image, [prompts([centre]), inside_negative])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not first[1][centre[1], centre[0] + 10]  # a definite background disc stays background
    assert first[1][centre[1], centre[0]]


def test_cam_threshold_is_the_binarised_saliency(registry, disc_image):
    from xaibench.pipeline.metrics import binarise

    image = disc_image[0]
    saliency = bumps(image.shape[:2], [(40, 80, 0.8), (10, 10, 0.5)], sigma=10.0)
    segmenter = registry.create("segmenters", "cam-threshold", threshold=0.4)
    assert segmenter.uses_saliency is True
    masks = segmenter.segment(image, [prompts([[3, 3]]), NO_PROMPTS], saliency=[saliency, saliency * 0.5])
    expected = binarise(saliency[None], 0.4)[0]
    assert expected.any() and not expected.all()
    for mask in masks:  # prompts and scale do not matter: it is the floor any prompted segmenter must beat
        np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="saliency"):
        segmenter.segment(image, [NO_PROMPTS])
    with pytest.raises(ValueError, match="2 prompt sets"):
        segmenter.segment(image, [NO_PROMPTS, NO_PROMPTS], saliency=[saliency])


# -- the contract of every registered seeder and segmenter ----------------------------------------------


def contract_saliency(shape=(36, 52)):
    grid = np.random.default_rng(3).random((5, 5)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=shape, mode="bilinear")
    return np.clip(up[0, 0].numpy(), 0.0, 1.0)


@pytest.mark.parametrize("name", INSTALLED.names("seeders"))
@pytest.mark.parametrize("kind", ["smooth", "constant"])
def test_every_seeder_keeps_the_contract(name, kind):
    saliency = contract_saliency() if kind == "smooth" else np.full((36, 52), 0.5, np.float32)
    before = saliency.copy()
    seeder = INSTALLED.create("seeders", name)
    found = seeder(saliency)
    assert isinstance(found, Prompts)
    assert found.points.dtype == np.float32 and found.points.ndim == 2 and found.points.shape[1] == 2
    assert found.labels.dtype == np.int64 and found.labels.shape == (len(found.points),)
    assert set(found.labels.tolist()) <= {0, 1}
    x, y = found.points.T
    assert np.all((0 <= x) & (x < 52) & (0 <= y) & (y < 36))
    if kind == "smooth":
        assert not found.empty  # a positive point, a box or a dense map
    validate_prompt_sets([found], saliency[None], capability(seeder, "prompt_kinds", "seeders"))
    again = seeder(saliency)
    np.testing.assert_array_equal(again.points, found.points)
    np.testing.assert_array_equal(again.labels, found.labels)
    np.testing.assert_array_equal(saliency, before)


def contract_segmenter(name):
    return TinySam() if name == "sam" else INSTALLED.create("segmenters", name)


# HQ-SAM and SAM 2 at toy size keep the kit's contract checks in test_conformance.py (boxes and dense maps too)
@pytest.mark.parametrize("name", sorted(set(INSTALLED.names("segmenters")) - {"sam-hq", "sam2"}))
def test_every_segmenter_keeps_the_contract(name, wide_image):
    image = wide_image.copy()
    image[10:30, 40:70] = (220, 40, 40)
    prompt_sets = [prompts([[55, 20], [5, 5]], [1, 0]), prompts([[50, 18]]), NO_PROMPTS]
    saliency = [contract_saliency(image.shape[:2]) for _ in prompt_sets]
    copies = [(p.points.copy(), p.labels.copy()) for p in prompt_sets]
    image_before, saliency_before = image.copy(), [s.copy() for s in saliency]
    segmenter = contract_segmenter(name)
    extra = {"saliency": saliency} if getattr(segmenter, "uses_saliency", False) else {}
    masks = segmenter.segment(image, prompt_sets, **extra)
    assert isinstance(masks, list) and len(masks) == 3
    for mask in masks:
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (48, 96)
    again = segmenter.segment(image, prompt_sets, **extra)
    for a, b in zip(masks, again):
        np.testing.assert_array_equal(a, b)
    assert segmenter.segment(image, [], **({"saliency": []} if extra else {})) == []
    np.testing.assert_array_equal(image, image_before)
    for p, (points, labels) in zip(prompt_sets, copies):
        np.testing.assert_array_equal(p.points, points)
        np.testing.assert_array_equal(p.labels, labels)
    for s, s_before in zip(saliency, saliency_before):
        np.testing.assert_array_equal(s, s_before)


@pytest.mark.parametrize("multimask, pick, score", [
    ("best", 1, 1.0),       # the highest predicted IoU (1.3, clipped to 1)
    ("largest", 2, 0.2),    # the most pixels, with its own score
    ("single", 0, 0.0),     # the first, whose -0.4 clips to 0
    ("union", None, 0.4),   # every candidate, the mean of the clipped scores
])
def test_sam_keeps_the_score_of_the_mask_it_chooses(multimask, pick, score):
    candidates = np.zeros((3, 8, 8), bool)
    candidates[0, :2, :2] = True
    candidates[1, :3, :3] = True
    candidates[2, :6, :6] = True
    mask, kept = SamSegmenter(multimask=multimask)._choose(candidates, np.array([-0.4, 1.3, 0.2]))
    expected = candidates.any(axis=0) if pick is None else candidates[pick]
    assert np.array_equal(mask, expected) and kept == pytest.approx(score)


def test_sam_scores_come_with_the_masks_and_nan_without_positive_points(disc_image):
    sam = TinySam()
    sets = [prompts([[20, 20]]), prompts([[3, 3]], [0])]
    masks, scores = sam.segment_with_scores(disc_image[0], sets)
    assert all(np.array_equal(a, b) for a, b in zip(masks, sam.segment(disc_image[0], sets)))
    assert 0.0 <= scores[0] <= 1.0 and np.isnan(scores[1]) and not masks[1].any()
