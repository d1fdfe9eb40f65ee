"""Behaviour of the built-in seeders (``top-k``) and segmenters (``random-walker``, ``watershed``, ``sam``).

SAM runs as a tiny randomly initialised model built from segment_anything's own modules, so the
tests exercise the real predictor (resizing, coordinate transform, mask decoding) without weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from xaibench.contracts import Prompts
from xaibench.errors import ComponentParamsError, UserError
from xaibench.registry import Registry
from xaibench_plugins import seeders, segmenters
from xaibench_plugins.segmenters import BACKGROUND, FOREGROUND, UNLABELLED, SamSegmenter, seed_markers

CLASSICAL_SEGMENTERS = ["random-walker", "watershed"]


@pytest.fixture(scope="module")
def registry():
    registry = Registry(load_entry_points=False)
    registry.add_plugin(seeders, name="seeders")
    registry.add_plugin(segmenters, name="segmenters")
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
