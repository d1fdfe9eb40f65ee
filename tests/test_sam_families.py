"""HQ-SAM (``sam-hq``) and SAM 2 (``sam2``) beside SAM (``sam``): which checkpoint a file holds, read from
the real architectures of every size; a wrong file refused before the run in one line; each prompt kind
reaching the model in its own frame, with one image embedding per call; and runs through ``xaibench run``
with the smallest official architectures, randomly initialised and saved in the official formats."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from tests.sam_models import TinySam2, TinySamHq, official_checkpoint
from xaibench.commands.cli import main
from xaibench.errors import UserError
from xaibench.kit.contracts import Prompts
from xaibench_plugins.sam import Checkpoint, Sam2Segmenter, SamHqSegmenter, SamSegmenter, identify

NONE = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
ARCHITECTURES = (
    [(SamSegmenter, {"model_type": size}, Checkpoint("SAM", size)) for size in ("vit_b", "vit_l", "vit_h")]
    + [(SamHqSegmenter, {"model_type": size}, Checkpoint("HQ-SAM", size))
       for size in ("vit_b", "vit_l", "vit_h", "vit_tiny")]
    + [(Sam2Segmenter, {"model": size, "version": version}, Checkpoint("SAM 2", size, version))
       for version in ("2.1", "2.0") for size in ("hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large")]
)


def meta_state(factory, params, monkeypatch) -> dict:
    """The parameter names and shapes of the official architecture, built on the meta device (no memory,
    no initialisation; Hiera reads its drop-path rates with ``.item()``, so its linspace stays on the CPU)."""
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *args, **kwargs: linspace(*args, **{**kwargs, "device": "cpu"}))
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if factory is Sam2Segmenter:
            from sam2.build_sam import build_sam2

            model = build_sam2(factory(**params).config(), None, device="meta")
        else:
            model = factory(**params)._architecture()
    return model.state_dict()


def shaped_checkpoint(state: dict, path, *, nested: bool):
    """A checkpoint with ``state``'s names and shapes whose tensors all view one zero (a few bytes on disk)."""
    shaped = {key: torch.zeros(()).expand(value.shape) for key, value in state.items()}
    torch.save({"model": shaped} if nested else shaped, path)
    return path


@pytest.mark.parametrize("factory, params, expected", ARCHITECTURES,
                         ids=[f"{e.family}-{e.version}-{e.model}" for _, _, e in ARCHITECTURES])
def test_each_official_architecture_is_identified_from_its_parameters(factory, params, expected, monkeypatch):
    state = meta_state(factory, params, monkeypatch)
    assert identify(state) == expected
    assert identify({"model": state}) == expected  # SAM 2's checkpoint format
    assert identify({"fc.weight": torch.zeros(2, 2)}) is None and identify([1, 2]) is None


# -- a wrong checkpoint is refused before the run ----------------------------------------------------------------

GRID = """\
name: families
seeds: [0]
datasets: [{name: synthetic, n_train: 16, n_val: 0, n_test: 2, image_size: 32}]
backbones: [{name: resnet18, target_layer: layer3}]
masks: []
explainers: [gradcam]
seeders: [top-k, {name: boxes, points: true}, dense]
segmenters: [SEGMENTER]
train: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


@pytest.mark.parametrize("segmenter, holds, message", [
    ("{name: sam2}", (Sam2Segmenter, {"model": "hiera_small"}),
     "is a SAM 2.1 hiera_small model, not a SAM 2.1 hiera_tiny model (model 'hiera_tiny', version '2.1'); "
     "set model to 'hiera_small' to match it"),
    ("{name: sam2, model: hiera_large}", (Sam2Segmenter, {"model": "hiera_large", "version": "2.0"}),
     "is a SAM 2.0 hiera_large model, not a SAM 2.1 hiera_large model (model 'hiera_large', version '2.1'); "
     "set version to '2.0' to match it"),
    ("{name: sam2}", (SamHqSegmenter, {"model_type": "vit_b"}),
     "is an HQ-SAM vit_b model, not a SAM 2.1 hiera_tiny model (model 'hiera_tiny', version '2.1'); use the "
     "segmenter sam-hq for it, or give sam2 a SAM 2 checkpoint"),
    ("{name: sam-hq}", (SamSegmenter, {"model_type": "vit_b"}),
     "is a SAM vit_b model, not an HQ-SAM vit_b model (model_type 'vit_b'); use the segmenter sam for it"),
    ("{name: sam-hq}", (SamHqSegmenter, {"model_type": "vit_tiny"}),
     "is an HQ-SAM vit_tiny model, not an HQ-SAM vit_b model (model_type 'vit_b'); set model_type to 'vit_tiny'"),
    ("{name: sam}", (Sam2Segmenter, {"model": "hiera_tiny", "version": "2.0"}),
     "is a SAM 2.0 hiera_tiny model, not a SAM vit_b model (model_type 'vit_b'); use the segmenter sam2 for it"),
    ("{name: sam, model_type: vit_h}", (SamHqSegmenter, {"model_type": "vit_h"}),
     "is an HQ-SAM vit_h model, not a SAM vit_h model (model_type 'vit_h'); use the segmenter sam-hq for it"),
], ids=["sam2-size", "sam2-version", "sam2-given-hq", "hq-given-sam", "hq-size", "sam-given-sam2", "sam-given-hq"])
def test_a_checkpoint_of_another_family_or_size_is_one_error_line_before_the_run(
        segmenter, holds, message, registry, write_grid, tmp_path, capsys, monkeypatch):
    factory, params = holds
    path = shaped_checkpoint(meta_state(factory, params, monkeypatch), tmp_path / "weights.pt",
                             nested=factory is Sam2Segmenter)
    monkeypatch.undo()  # torch.linspace back
    grid = GRID.replace("SEGMENTER", segmenter[:-1] + f", checkpoint: {path}}}")
    out = tmp_path / "run"
    code = main(["run", "--grid", str(write_grid(grid)), "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 2 and "Traceback" not in printed.err and printed.err.count("\n") <= 2
    assert printed.err.startswith("error: ") and f"checkpoint {str(path)!r} {message}" in printed.err
    assert not out.exists()


@pytest.mark.parametrize("segmenter, message", [
    ("{name: sam2}", "sam2: parameter 'checkpoint' is not set. Download the official SAM 2.1 hiera_tiny weights "
                     "from https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"),
    ("{name: sam2, version: 2.0, model: hiera_large}",  # YAML reads 2.0 as a number
     "Download the official SAM 2.0 hiera_large weights from "
     "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"),
    ("{name: sam-hq, model_type: vit_tiny}", "Download the official HQ-SAM vit_tiny weights from "
                                             "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_tiny.pth"),
])
def test_a_missing_checkpoint_says_which_official_file_to_get(segmenter, message, registry, write_grid, tmp_path,
                                                             capsys):
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(GRID.replace("SEGMENTER", segmenter))), "--out", str(out)]) == 2
    printed = capsys.readouterr()
    assert message in printed.err and printed.err.count("\n") <= 2 and not out.exists()


def test_a_missing_package_names_the_extra_to_install(registry, write_grid, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sam2" else find_spec(name, *a))
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(GRID.replace("SEGMENTER", "sam2"))), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sam2: needs the package 'sam2', which is not installed: pip install 'xaibench[sam]'" in err
    assert not out.exists()


def test_a_checkpoint_missing_parameters_is_refused_when_loaded_not_loaded_partly(tmp_path, monkeypatch):
    state = meta_state(SamHqSegmenter, {"model_type": "vit_tiny"}, monkeypatch)
    monkeypatch.undo()
    del state["mask_decoder.hf_mlp.layers.2.weight"]
    path = shaped_checkpoint(state, tmp_path / "hq.pth", nested=False)
    segmenter = SamHqSegmenter(checkpoint=str(path), model_type="vit_tiny", device="cpu")
    assert segmenter.check() == path  # the family and size are right
    with pytest.raises(UserError, match="does not fit an HQ-SAM vit_tiny model .*: 1 parameter.s. missing "
                                        "\\(mask_decoder.hf_mlp.layers.2.weight\\). It is damaged"):
        segmenter._build_model()


# -- prompts reach each model in its frame, with one embedding per call -------------------------------------------


@pytest.fixture(scope="module")
def image():
    picture = np.random.default_rng(0).integers(0, 256, (48, 96, 3), dtype=np.uint8)
    picture[10:30, 20:60] = (200, 60, 40)
    return picture


def prompt_sets():
    dense = np.full((48, 96), -6.0, np.float32)
    dense[10:30, 20:60] = 6.0
    return [Prompts(np.array([[30, 20]], np.float32), np.ones(1, np.int64)),
            Prompts(*NONE, boxes=np.array([[20, 10, 60, 30]], np.float32)),
            Prompts(*NONE, dense=dense),
            Prompts(*NONE)]


def spy_prompt_encoder(segmenter, encoder_name):
    """Record the (points, labels) and masks each call gives the model's prompt encoder."""
    seen = []
    model = segmenter._loaded_model()
    getattr(model, encoder_name).register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["points"], kwargs["masks"])), with_kwargs=True)
    return seen


def test_sam2_embeds_once_and_reads_boxes_as_corner_pixels_and_dense_maps_stretched(image):
    segmenter = TinySam2(multimask="single")
    seen = spy_prompt_encoder(segmenter, "sam_prompt_encoder")
    masks, scores = segmenter.segment_with_scores(image, prompt_sets())
    assert segmenter.encodings == 1  # one image embedding for the four prompt sets
    assert [mask.shape for mask in masks] == [(48, 96)] * 4 and not masks[3].any() and np.isnan(scores[3])
    assert len(seen) == 3  # the empty set costs no decoding
    (points, labels), _ = seen[0]
    torch.testing.assert_close(points, torch.tensor([[[30 * 1024 / 96, 20 * 1024 / 48]]]))
    (corners, box_labels), _ = seen[1]  # SAM 2 gives a box as two points labelled 2 and 3
    torch.testing.assert_close(corners, torch.tensor([[[20 * 1024 / 96, 10 * 1024 / 48],
                                                       [59 * 1024 / 96, 29 * 1024 / 48]]]))
    assert box_labels.tolist() == [[2, 3]]
    _, frame = seen[2]  # the image is stretched to SAM 2's square input: the map fills the whole frame
    assert frame.shape == (1, 1, 256, 256) and frame.min() < 0
    expected = torch.nn.functional.interpolate(torch.from_numpy(prompt_sets()[2].dense)[None, None], (256, 256),
                                               mode="bilinear", align_corners=False)
    torch.testing.assert_close(frame, expected)
    assert len({mask.tobytes() for mask in masks[:3]}) == 3  # each kind prompts the model differently


def test_sam_hq_embeds_once_keeps_sams_frame_and_passes_hq_token_only(image):
    decoded = []
    for hq_token_only in (False, True):
        segmenter = TinySamHq(hq_token_only=hq_token_only)
        seen = spy_prompt_encoder(segmenter, "prompt_encoder")
        segmenter._loaded_model().mask_decoder.register_forward_pre_hook(
            lambda module, args, kwargs: decoded.append(kwargs["hq_token_only"]), with_kwargs=True)
        masks = segmenter.segment(image, prompt_sets())
        assert segmenter.encodings == 1 and len(seen) == 3 and not masks[3].any()
    assert decoded == [False] * 3 + [True] * 3
    _, frame = seen[2]  # SAM's frame: the 48 x 96 image fills the top half of the 16 x 16 frame (toy size)
    assert frame.shape == (1, 1, 16, 16) and (frame[0, 0, 8:] == frame.min()).all() and frame[0, 0, :8].max() > 0


@pytest.mark.parametrize("make", [TinySam2, TinySamHq], ids=["sam2", "sam-hq"])
def test_a_dense_map_goes_back_to_the_frame_cell_the_models_own_output_came_from(make):
    """A smooth blob of logits in the model's low-resolution frame, taken to image size by the package's own
    post-processing (how its predicted masks reach the image) and brought back by ``_low_resolution``, is
    where it was: the frame's geometry (SAM 2 stretched, SAM padded) is the package's, not assumed."""
    segmenter = make()
    model = segmenter._loaded_model()
    side = segmenter._mask_frame()
    rows, cols = np.mgrid[:side, :side]
    blob = 16 * np.exp(-((rows - 0.22 * side) ** 2 + (cols - 0.6 * side) ** 2) / (2 * (side / 8) ** 2)) - 8
    frame = torch.from_numpy(blob.astype(np.float32))[None, None]
    height, width = 48, 96
    if make is TinySam2:
        dense = segmenter._predictor(model)._transforms.postprocess_masks(frame, (height, width))
        inside = np.s_[:, :]
    else:
        from segment_anything_hq.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide.get_preprocess_shape(height, width, model.image_encoder.img_size)
        dense = model.postprocess_masks(frame, resized, (height, width))
        inside = np.s_[: side * height // width, :]  # below the image, the frame holds padding
    back = segmenter._low_resolution(dense[0, 0].numpy())[0]
    assert np.abs(back[inside] - blob[inside]).max() < 1.6  # a tenth of the blob's height: resampling only


# -- through xaibench run, with the official architectures --------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return (official_checkpoint("sam-hq", folder / "sam_hq_vit_tiny.pth"),
            official_checkpoint("sam2", folder / "sam2.1_hiera_tiny.pt"))


@pytest.mark.slow
def test_sam_hq_and_sam2_run_from_official_format_checkpoints(checkpoints, registry, write_grid, tmp_path):
    hq, sam2 = checkpoints
    grid = GRID.replace("SEGMENTER", f"{{name: sam-hq, model_type: vit_tiny, checkpoint: {hq}, device: cpu}}, "
                                     f"{{name: sam2, checkpoint: {sam2}, device: cpu}}")
    grid = grid.replace("n_test: 2", "n_test: 1").replace("[top-k, {name: boxes", "[{name: boxes")
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(grid)), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    assert set(table["status"]) == {"done"} and table["seg_iou"].between(0, 1).all()
    for name in ("sam-hq", "sam2"):
        rows = table[table["segmenter"].str.startswith(name)]
        assert len(rows) == 2, name  # one row per seeder: boxes with points, the dense map


def test_the_segment_anything_lines_shipped_in_the_prompts_grid_are_valid(registry, tmp_path, capsys):
    """grids/prompts.yaml ships its SAM, HQ-SAM and SAM 2 lines commented out; uncommented, each is a valid
    segmenter whose only fault is the checkpoint a user has yet to download."""
    from pathlib import Path

    shipped = (Path(__file__).parents[1] / "grids" / "prompts.yaml").read_text()
    lines = [line[2:].split(" # ")[0].rstrip() for line in shipped.splitlines() if line.startswith("#   - {name: sam")]
    assert [line.split(",")[0] for line in lines] == ["  - {name: sam", "  - {name: sam-hq", "  - {name: sam2"]
    grid = tmp_path / "prompts.yaml"
    grid.write_text(shipped.replace("segmenters: [random-walker, watershed, grabcut, cam-threshold]",
                                    "segmenters:\n  - cam-threshold\n" + "\n".join(lines)))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    for name, file in (("sam", "sam_vit_b_01ec64.pth"), ("sam-hq", "sam_hq_vit_b.pth"),
                       ("sam2", "sam2.1_hiera_tiny.pt")):
        assert f"{name}: checkpoint file {str(tmp_path / 'path' / 'to' / file)!r} (parameter 'checkpoint') " \
               f"does not exist" in err, err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["sam-hq", "sam2"])
def test_sam_hq_and_sam2_on_cuda_give_the_cpus_masks(family, checkpoints, image):
    """The smallest official architectures on CUDA and on the CPU, from one checkpoint: the same masks up to
    pixels on a mask's edge (float rounding), and the same predicted IoU to 1e-3."""
    hq, sam2 = checkpoints
    make = (lambda device: SamHqSegmenter(checkpoint=str(hq), model_type="vit_tiny", device=device)) \
        if family == "sam-hq" else (lambda device: Sam2Segmenter(checkpoint=str(sam2), device=device))
    cpu_masks, cpu_scores = make("cpu").segment_with_scores(image, prompt_sets())
    cuda_masks, cuda_scores = make("cuda").segment_with_scores(image, prompt_sets())
    for on_cpu, on_cuda in zip(cpu_masks, cuda_masks):
        union = (on_cpu | on_cuda).sum()
        assert union == 0 or (on_cpu & on_cuda).sum() / union > 0.99
    np.testing.assert_allclose(cuda_scores, cpu_scores, atol=1e-3)
