"""Prompts beyond points: boxes and a dense mask prompt, from the seeders that give them to the segmenters
that take them, checked at every step: the contract, the seeds artifact, grid validation of which seeder
may prompt which segmenter, the marker segmenters' and SAM's use of each kind, and a run through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import ContractViolation, GridError
from xaibench.kit.contracts import Prompts, validate_prompt_sets
from xaibench.kit.registry import get_registry
from xaibench.pipeline.artifacts import pack_prompts, prompts_at
from xaibench.pipeline.grid import parse_grid
from xaibench_plugins.sam import SamSegmenter

NONE = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)


def box_prompts(*boxes, points=None):
    points = np.asarray(points or [], np.float32).reshape(-1, 2)
    return Prompts(points, np.ones(len(points), np.int64), np.asarray(boxes, np.float32).reshape(-1, 4))


# -- seeders -------------------------------------------------------------------------------------------------


def test_the_boxes_seeder_boxes_each_salient_region_largest_first():
    saliency = np.zeros((20, 30), np.float32)
    saliency[2:5, 3:9] = 1.0  # 18 pixels
    saliency[10:12, 20:22] = 0.9  # 4 pixels
    saliency[15, 5] = 0.8  # 1 pixel
    saliency[16, 6] = 0.8  # diagonal neighbour: the same region (8-connected)
    boxes = get_registry().create("seeders", "boxes", threshold=0.5, k=2)
    found = boxes(saliency)
    assert found.kinds == {"boxes"} and not len(found.points)
    np.testing.assert_array_equal(found.boxes, [[3, 2, 9, 5], [20, 10, 22, 12]])  # pixel edges; the 2-pixel one left out
    with_points = get_registry().create("seeders", "boxes", k=3, points=True)
    found = with_points(saliency)
    assert with_points.prompt_kinds == ("points", "boxes") and found.kinds == {"points", "boxes"}
    np.testing.assert_array_equal(found.boxes[2], [5, 15, 7, 17])
    np.testing.assert_array_equal(found.points, [[3, 2], [20, 10], [5, 15]])  # each region's first peak pixel
    assert not boxes(np.full((20, 30), 0.3, np.float32)).kinds  # a constant map: no region


def test_the_dense_seeder_gives_the_scaled_map_as_logits():
    saliency = np.linspace(0.2, 0.6, 12, dtype=np.float32).reshape(3, 4)
    found = get_registry().create("seeders", "dense", threshold=0.25, gain=8.0)(saliency)
    expected = 8.0 * ((saliency - 0.2) / 0.4 - 0.25)
    assert found.kinds == {"dense"} and found.dense.dtype == np.float32
    np.testing.assert_allclose(found.dense, expected, atol=1e-5)


# -- the contract and the seeds artifact -------------------------------------------------------------------


def test_boxes_and_dense_maps_are_validated():
    maps = np.zeros((1, 10, 20), np.float32)
    validate_prompt_sets([box_prompts([0, 0, 20, 10])], maps, ("boxes",))
    for bad, words in [(box_prompts([0, 0, 21, 10]), "0 <= x0 <= x1 <= 20"), (box_prompts([5, 0, 4, 3]), "x0 <= x1"),
                       (Prompts(*NONE, np.zeros((1, 4), np.float64)), "float32 \\(M, 4\\)"),
                       (Prompts(*NONE, dense=np.zeros((10, 19), np.float32)), "float32 \\(10, 20\\)"),
                       (Prompts(*NONE, dense=np.full((10, 20), np.nan, np.float32)), "finite")]:
        with pytest.raises(ContractViolation, match=words):
            validate_prompt_sets([bad], maps, ("boxes", "dense"))
    with pytest.raises(ContractViolation, match="gave boxes prompts but declares prompt_kinds \\('points',\\)"):
        validate_prompt_sets([box_prompts([0, 0, 4, 4])], maps, ("points",))


def test_the_seeds_artifact_keeps_boxes_and_dense_maps():
    dense = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    sets = [box_prompts([1, 2, 3, 4], [5, 0, 8, 6], points=[[2, 3]]), Prompts(*NONE), Prompts(*NONE, dense=dense),
            box_prompts()]
    packed = pack_prompts(sets)
    for row, original in enumerate(sets):
        back = prompts_at(packed, row)
        assert back.kinds == original.kinds
        np.testing.assert_array_equal(back.points, original.points)
        for a, b in ((back.boxes, original.boxes), (back.dense, original.dense)):
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    assert set(pack_prompts([Prompts(np.array([[1, 1]], np.float32), np.ones(1, np.int64))])) == {"points", "labels"}


# -- which seeder may prompt which segmenter ---------------------------------------------------------------

GRID = """\
name: prompts
datasets: [{name: synthetic, n_train: 8, n_val: 0, n_test: 8, image_size: 32}]
backbones: [resnet18]
explainers: [gradcam]
seeders: SEEDERS
segmenters: SEGMENTERS
"""


def grid(seeders, segmenters):
    return GRID.replace("SEEDERS", seeders).replace("SEGMENTERS", segmenters)


class Discs:
    """A third-party segmenter that takes points only (it declares no prompt_kinds)."""

    def segment(self, image, prompts):
        return [np.zeros(image.shape[:2], bool) for _ in prompts]


class DiscsPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("discs", Discs)


def test_a_seeder_giving_prompts_a_segmenter_does_not_take_is_refused_naming_both(registry, add_plugin):
    add_plugin(DiscsPlugin(), name="discs-plugin")
    with pytest.raises(GridError) as error:
        parse_grid(grid("[top-k, dense]", "[random-walker, discs]"), "g.yaml", registry=registry)
    message = str(error.value)
    assert "seeders[1]: seeder dense gives dense prompts, which segmenter discs (segmenters[1]) does not " \
           "take (it takes points)" in message
    assert message.count("does not take") == 1  # random-walker takes dense maps; top-k's points go everywhere
    with pytest.raises(GridError, match="seeder boxes\\(points=True\\) gives boxes prompts, which segmenter discs "
                                        "\\(segmenters\\[0\\]\\) does not take \\(it takes points\\); pair them "
                                        "with segmenters that take boxes \\(cam-threshold, grabcut, random-walker, sam, sam-hq, sam2, "
                                        "watershed\\)"):
        parse_grid(grid("[{name: boxes, points: true}]", "[discs]"), "g.yaml", registry=registry)
    class Muddled:
        prompt_kinds = "points"  # a string, not a tuple of kinds

        def __call__(self, saliency):
            return Prompts(*NONE)

    class MuddledPlugin:
        @hookimpl
        def register_seeders(self, register):
            register("muddled", Muddled)

    add_plugin(MuddledPlugin(), name="muddled-plugin")
    with pytest.raises(GridError, match="seeders\\[0\\]: seeder muddled declares prompt_kinds 'points'; declare a "
                                        "tuple of the kinds of prompt it gives"):
        parse_grid(grid("[muddled]", "[random-walker]"), "g.yaml", registry=registry)
    for seeders, segmenters in (("[dense, boxes, {name: boxes, points: true}]", "[random-walker, watershed, grabcut]"),
                                ("[dense, boxes, top-k]", "[sam, cam-threshold]")):
        parse_grid(grid(seeders, segmenters), "g.yaml", registry=registry)


# -- the segmenters ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_image():
    image = np.random.default_rng(1).integers(0, 60, (40, 48, 3), dtype=np.uint8)
    image[10:24, 16:34] = (230, 200, 40)
    return image


@pytest.mark.parametrize("name", ["random-walker", "watershed", "grabcut"])
def test_a_box_or_a_dense_map_round_an_object_segments_it_with_the_marker_segmenters(name, square_image):
    segmenter = get_registry().create("segmenters", name)
    truth = np.zeros((40, 48), bool)
    truth[10:24, 16:34] = True
    dense = np.full((40, 48), -5.0, np.float32)
    dense[11:23, 17:33] = 5.0  # the object but its edge pixels: the segmenter grows it to the object's edges
    nothing = Prompts(*NONE, dense=np.full((40, 48), -5.0, np.float32))
    box, grown, empty = segmenter.segment(square_image, [box_prompts([14, 8, 36, 26]), Prompts(*NONE, dense=dense),
                                                         nothing])
    for mask in (box, grown):
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8
    assert not box[:, :12].any() and not box[30:].any()  # far outside the box is background
    assert grown.sum() > (dense > 0).sum() and not empty.any()


def tiny_sam():
    from tests.test_seeders_segmenters import tiny_sam as build

    return build()


class TinySam(SamSegmenter):
    """SAM at toy size, recording what its prompt encoder is given."""

    def __init__(self, **params):
        super().__init__(device="cpu", **params)
        self.given = []

    def check(self):  # the toy model needs no checkpoint
        return None

    def _build_model(self):
        model = tiny_sam()
        model.prompt_encoder.register_forward_pre_hook(
            lambda module, args, kwargs: self.given.append({k: None if v is None else
                                                            (tuple(t.clone() for t in v) if isinstance(v, tuple)
                                                             else v.clone()) for k, v in kwargs.items()}),
            with_kwargs=True)
        return model


def test_sam_takes_each_box_with_the_points_inside_it_and_unites_their_masks(square_image):
    from segment_anything import SamPredictor

    sam = TinySam(multimask="single")
    prompt_set = box_prompts([14, 8, 36, 26], [0, 28, 10, 40], points=[[20, 12], [5, 35], [44, 2]])
    (mask,), (score,) = sam.segment_with_scores(square_image, [prompt_set])
    first, second = sam.given
    scale = torch.tensor([64 / 48, 53 / 40])  # the tiny SAM resizes the 40 x 48 image to 53 x 64
    # pixel edges (14, 8, 36, 26) reach SAM as the first and last pixels' indices, the corners it reads
    torch.testing.assert_close(first["boxes"].reshape(2, 2), torch.tensor([[14, 8], [35, 25]]) * scale)
    torch.testing.assert_close(first["points"][0], torch.tensor([[[20, 12]]]) * scale)  # only the point inside
    torch.testing.assert_close(second["points"][0], torch.tensor([[[5, 35]]]) * scale)
    predictor = SamPredictor(tiny_sam())
    predictor.set_image(square_image)
    expected = [predictor.predict(np.array([p], np.float32), np.ones(1), box=np.array(b, np.float32),
                                  multimask_output=False) for p, b in (([20, 12], [14, 8, 35, 25]),
                                                                       ([5, 35], [0, 28, 9, 39]))]
    np.testing.assert_array_equal(mask, expected[0][0][0] | expected[1][0][0])
    assert score == pytest.approx(np.mean([np.clip(e[1][0], 0, 1) for e in expected]))


def test_sam_takes_a_dense_map_in_its_low_resolution_frame(square_image):
    from segment_anything import SamPredictor

    dense = np.full((40, 48), -10.0, np.float32)
    dense[10:24, 16:34] = 10.0
    sam = TinySam(multimask="single")
    (mask,) = sam.segment(square_image, [Prompts(*NONE, dense=dense)])
    (given,) = sam.given
    assert given["points"] is None and given["boxes"] is None
    frame = given["masks"][0, 0]  # the tiny SAM's low-resolution frame is 16 x 16; the image fills 13 x 16 of it
    assert frame.shape == (16, 16) and torch.all(frame[13:] == -10.0)  # the padding below the image
    positive = torch.nonzero(frame > 0)  # rows 10-24 and columns 16-34 of 40 x 48, times 16 / 48
    assert (positive[:, 0].min(), positive[:, 0].max()) == (3, 7)
    assert (positive[:, 1].min(), positive[:, 1].max()) == (5, 10)
    predictor = SamPredictor(tiny_sam())
    predictor.set_image(square_image)
    (expected,), _, _ = predictor.predict(mask_input=frame[None].numpy(), multimask_output=False)
    np.testing.assert_array_equal(mask, expected)


def test_an_empty_prompt_set_costs_sam_no_encoding(square_image):
    sam = TinySam()
    nothing = Prompts(*NONE, dense=np.full((40, 48), -3.0, np.float32))  # a dense map marking no foreground
    assert nothing.empty and not Prompts(*NONE, dense=np.full((40, 48), 0.5, np.float32)).empty
    masks = sam.segment(square_image, [Prompts(*NONE), box_prompts(), nothing])
    assert not any(mask.any() for mask in masks) and sam._model is None


# -- through a run -------------------------------------------------------------------------------------------


class TinySamPlugin:
    @hookimpl
    def register_segmenters(self, register):
        register("tiny-sam", TinySam)


RUN = """\
name: prompts
seeds: [0]
datasets: [{name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32}]
backbones: [{name: resnet18, target_layer: layer3}]
masks: []
explainers: [gradcam]
seeders: [top-k, boxes, {name: boxes, points: true}, dense]
segmenters: [cam-threshold, tiny-sam]
train: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


def test_every_prompt_kind_runs_through_xaibench_run(add_plugin, write_grid, tmp_path):
    add_plugin(TinySamPlugin(), name="tiny-sam-plugin")
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(RUN)), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    assert len(table) == 8 and set(table["status"]) == {"done"}
    assert table["seg_iou"].between(0, 1).all()
    sam = table[table["segmenter"].str.startswith("tiny-sam")]
    assert sam["seg_iou"].nunique() > 1  # boxes, points and dense maps prompt SAM differently
    run = json.loads((out / "run.json").read_text())
    assert run["cells_failed"] == 0


LOOP = """\
name: prompts-loop
seeds: [0]
datasets: [{name: blobs, n: 12}]
backbones: [{name: resnet18, weights: none}]
masks: [white]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [gradcam]
seeders: [{name: boxes, points: true}, dense]
segmenters: [tiny-sam]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
loop: {rounds: 1, acceptors: [always]}
protocol: {faithfulness_steps: 0}
"""


def test_the_annotation_loop_takes_boxes_and_dense_prompts(blobs, add_plugin, write_grid, tmp_path):
    add_plugin(TinySamPlugin(), name="tiny-sam-plugin")
    out = tmp_path / "loop"
    assert main(["loop", "--grid", str(write_grid(LOOP)), "--out", str(out), "--quiet"]) == 0
    seeds = pd.read_csv(out / "loop_seeds.csv")
    assert len(seeds) == 2 * 2 and "failed" not in set(seeds["status"])  # 2 seeders x 2 rounds
    assert seeds["proposal_iou"].notna().all()
    accepted = seeds[seeds["round"] == 0]
    assert (accepted["accepted"] == 1.0).all()
