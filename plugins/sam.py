"""Segment Anything's families as segmenters: SAM (``sam``, Kirillov et al. 2023), HQ-SAM (``sam-hq``, Ke
et al. 2023, the ``segment-anything-hq`` package) and SAM 2 (``sam2``, Ravi et al. 2024, the ``sam2``
package). Each takes points, boxes and a dense mask prompt, loads the official checkpoint from a path,
checks it before the run starts (``check``: a file of another family or size is one error naming what it
is), computes the image embedding once per ``segment`` call for all its prompt sets, and runs on CPU or
CUDA. ``segment-anything`` is a core dependency; HQ-SAM and SAM 2 come with the ``sam`` extra
(``pip install 'xaibench[sam]'``).
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
from pydantic import BeforeValidator

from xaibench.errors import UserError
from xaibench.kit.contracts import Prompts
from xaibench.kit.hookspecs import hookimpl
from xaibench.pipeline.training import resolve_device
from xaibench_plugins.segmenters import _check_image

SAM_CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}
HQ_CHECKPOINT_URLS = {size: f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_{size}.pth"
                      for size in ("vit_b", "vit_l", "vit_h", "vit_tiny")}
SAM2_MODELS = ("hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large")
SAM2_CONFIGS = {"hiera_tiny": "t", "hiera_small": "s", "hiera_base_plus": "b+", "hiera_large": "l"}
SAM2_CHECKPOINT_URLS = {
    (version, model): f"https://dl.fbaipublicfiles.com/segment_anything_2/{folder}/{stem}_{model}.pt"
    for version, folder, stem in (("2.1", "092824", "sam2.1"), ("2.0", "072824", "sam2")) for model in SAM2_MODELS
}

_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
# Hiera trunks: (patch embedding width, number of blocks) -> model
_HIERA = {(96, 12): "hiera_tiny", (96, 16): "hiera_small", (112, 24): "hiera_base_plus", (144, 48): "hiera_large"}


# -- what a checkpoint holds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: a ``family`` ("SAM", "HQ-SAM", "MobileSAM", "SAM 2"), its ``model``
    (the segmenter parameter's value: vit_b, hiera_tiny, ...) and, for SAM 2, its ``version``."""

    family: str
    model: str
    version: str = ""

    @property
    def name(self) -> str:
        """As the model's authors name it: "SAM vit_b", "HQ-SAM vit_tiny", "SAM 2.1 hiera_tiny"."""
        return f"{f'SAM {self.version}' if self.family == 'SAM 2' else self.family} {self.model}"

    def describe(self) -> str:
        return f"{'an' if self.name[0] in 'HM' else 'a'} {self.name} model"


def identify(state) -> Checkpoint | None:
    """The ``Checkpoint`` a loaded state (a state dict, or SAM 2's ``{"model": state dict}``) holds, read
    from its parameter names and shapes; None when it holds no Segment Anything image encoder."""
    if not isinstance(state, dict):
        return None
    if isinstance(state.get("model"), dict):
        state = state["model"]
    shape = _shape(state, "image_encoder.trunk.patch_embed.proj.weight")
    if shape is not None:  # a Hiera trunk: SAM 2
        blocks = len({key.split(".")[3] for key in state if key.startswith("image_encoder.trunk.blocks.")})
        model = _HIERA.get((shape[0], blocks), f"Hiera (width {shape[0]}, {blocks} blocks)")
        return Checkpoint("SAM 2", model, "2.1" if "no_obj_embed_spatial" in state else "2.0")
    hq = "mask_decoder.hf_token.weight" in state
    shape = _shape(state, "image_encoder.patch_embed.proj.weight")
    if shape is not None:  # a plain ViT: SAM or HQ-SAM
        return Checkpoint("HQ-SAM" if hq else "SAM", _VIT_WIDTHS.get(shape[0], f"ViT (width {shape[0]})"))
    if _shape(state, "image_encoder.patch_embed.seq.0.c.weight") is not None:  # a TinyViT
        return Checkpoint("HQ-SAM" if hq else "MobileSAM", "vit_tiny")
    return None


def _shape(state: dict, key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    return tuple(int(n) for n in value.shape) if hasattr(value, "shape") else None


def _pixel_corners(box: np.ndarray) -> np.ndarray:
    """A box in pixel edges (x0, y0, x1, y1; a one-pixel box at column c is (c, ., c + 1, .)) as Segment
    Anything reads boxes: the first and last pixels' indices (it shifts each corner to its pixel's centre)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], dtype=np.float32)


# -- the shared segmenter ---------------------------------------------------------------------------------


class _SegmentAnything:
    """The prompting shared by the families. A family sets ``name``, ``family``, ``size_param`` (the
    parameter naming the model size), ``package`` (the import that must exist, with the pip hint) and
    implements ``_expected`` (the ``Checkpoint`` its parameters ask for), ``_urls`` (where to get it),
    ``_architecture`` (the model without weights), ``_predictor`` and ``_mask_frame``."""

    name = "sam"
    family = "SAM"
    size_param = "model_type"
    package: tuple[str, str] | None = None  # (module, pip install hint) when not a core dependency
    path_params = ("checkpoint",)  # a relative path in a grid is read from the grid file's folder
    prompt_kinds = ("points", "boxes", "dense")
    keep_aspect = True  # the frame: the image resized so its longer side fills it, then padded right and below
    multimask: str
    checkpoint: str | None
    device: str

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def segment(self, image: np.ndarray, prompts: Sequence[Prompts]) -> list[np.ndarray]:
        return self.segment_with_scores(image, prompts)[0]

    def segment_with_scores(self, image: np.ndarray,
                            prompts: Sequence[Prompts]) -> tuple[list[np.ndarray], list[float]]:
        """``segment``'s masks and, per mask, the model's predicted IoU clipped to [0, 1] (the mean of the
        candidates' for "union", and of the boxes' for several boxes; NaN for an empty prompt set, whose
        mask is empty)."""
        image = np.ascontiguousarray(_check_image(image))
        prompts = list(prompts)
        shape = image.shape[:2]
        masks = [np.zeros(shape, dtype=bool) for _ in prompts]
        scores = [float("nan")] * len(prompts)
        if all(prompt_set.empty for prompt_set in prompts):
            return masks, scores

        predictor = self._predictor(self._loaded_model())
        predictor.set_image(image)  # the image embedding: once for all the prompt sets
        for i, prompt_set in enumerate(prompts):
            if prompt_set.empty:
                continue
            mask_input = None if prompt_set.dense is None else self._low_resolution(prompt_set.dense)
            boxes = prompt_set.boxes if "boxes" in prompt_set.kinds else [None]
            found = []
            for box in boxes:
                inside = np.ones(len(prompt_set.labels), dtype=bool) if box is None else (
                    (prompt_set.points[:, 0] >= box[0]) & (prompt_set.points[:, 0] < box[2])
                    & (prompt_set.points[:, 1] >= box[1]) & (prompt_set.points[:, 1] < box[3]))
                candidates, predicted_iou, _ = self._predict(
                    predictor,
                    point_coords=prompt_set.points[inside] if inside.any() else None,
                    point_labels=prompt_set.labels[inside] if inside.any() else None,
                    box=None if box is None else _pixel_corners(box),
                    mask_input=mask_input,
                    multimask_output=self.multimask != "single",
                )
                found.append(self._choose(np.asarray(candidates) > 0, np.asarray(predicted_iou)))
            masks[i] = np.logical_or.reduce([mask for mask, _ in found])
            scores[i] = float(np.mean([score for _, score in found]))
        return masks, scores

    def _predict(self, predictor, **prompts):
        return predictor.predict(**prompts)

    def _low_resolution(self, dense: np.ndarray) -> np.ndarray:
        """float32 (1, S, S): image-size logits ``dense`` (H, W) placed in the model's low-resolution mask
        frame as the model places the image there: resized so its longer side fills the frame and padded
        right and below (``keep_aspect``; the padding gets the map's minimum), or stretched to fill it."""
        import torch

        side = self._mask_frame()
        height, width = dense.shape
        scale = side / max(height, width)
        inner = (int(height * scale + 0.5), int(width * scale + 0.5)) if self.keep_aspect else (side, side)
        resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(dense))[None, None], inner,
                                                  mode="bilinear", align_corners=False)[0, 0]
        frame = torch.full((1, side, side), float(dense.min()))
        frame[0, : inner[0], : inner[1]] = resized
        return frame.numpy()

    def _choose(self, candidates: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
        """One (H, W) mask from the model's (C, H, W) candidates by the ``multimask`` policy, and its score."""
        scores = np.clip(scores.astype(np.float64), 0.0, 1.0)
        if self.multimask == "union":
            return candidates.any(axis=0), float(scores.mean())
        if self.multimask == "best":
            pick = int(np.argmax(scores))
        elif self.multimask == "largest":
            pick = int(np.argmax(candidates.sum(axis=(1, 2))))
        else:
            pick = 0
        return candidates[pick], float(scores[pick])

    def _loaded_model(self):
        if self._model is None:
            model = self._build_model()
            model.to(self._resolve_device())
            model.eval()
            self._model = model
        return self._model

    def _resolve_device(self) -> str:
        return resolve_device(self.device, what=f"{self.name} parameter device")

    # -- the checkpoint, checked before the run --

    def _download(self) -> str:
        """Where to get the official weights, as one sentence's end."""
        url, others = self._urls()
        return (f"Download the official {self._expected().name} weights from {url} "
                f"(other sizes: {', '.join(others)}) and set the {self.name} parameter 'checkpoint' to the file's "
                f"path")

    def check(self) -> Path:
        """The checkpoint's path, once it is found to hold this segmenter's model; otherwise a ``UserError``
        naming the file, what it is, and where to get the right one. Called before a run starts, so a bad
        checkpoint stops the run before anything is written."""
        return self._checked()[0]

    def _checked(self):
        """``check``'s path and the checkpoint's contents it read (memory-mapped)."""
        if self.package is not None and importlib.util.find_spec(self.package[0]) is None:
            raise UserError(f"{self.name}: needs the package {self.package[1]!r}, which is not installed: "
                            f"pip install 'xaibench[sam]'")
        if self.checkpoint is None:
            raise UserError(f"{self.name}: parameter 'checkpoint' is not set. {self._download()}.")
        path = Path(self.checkpoint).expanduser()
        if path.is_dir():
            raise UserError(f"{self.name}: checkpoint {str(path)!r} (parameter 'checkpoint') is a folder, not a "
                            f"file. {self._download()}.")
        if not path.is_file():
            raise UserError(f"{self.name}: checkpoint file {str(path)!r} (parameter 'checkpoint') does not exist. "
                            f"{self._download()}.")
        state = self._read(path)
        self._check_file(path, state)
        return path, state

    def _read(self, path: Path):
        """The checkpoint's contents as tensors only (memory-mapped: cheap), or a ``UserError``."""
        import torch

        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # truncated, garbage, not a torch file, or a pickle of code
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UserError(f"{self.name}: checkpoint {str(path)!r} cannot be read as tensors ({type(exc).__name__}: "
                            f"{first}); it is truncated, damaged or not a {self.family} checkpoint. "
                            f"{self._download()}.") from None

    def _check_file(self, path: Path, state) -> None:
        expected = self._expected()
        found = identify(state)
        if found is None:
            raise UserError(f"{self.name}: checkpoint {str(path)!r} holds no Segment Anything image encoder; it is "
                            f"not a {self.family} checkpoint. {self._download()}.")
        if found == expected:
            return
        if found.family == expected.family:
            setting = f"set {self.size_param} to {found.model!r}" + (
                f" and version to {found.version!r}" if found.version != expected.version else "")
            if found.model == expected.model:
                setting = f"set version to {found.version!r}"
            raise UserError(f"{self.name}: checkpoint {str(path)!r} is {found.describe()}, not "
                            f"{expected.describe()} ({self._asked()}); {setting} to match it")
        other = {"SAM": "sam", "HQ-SAM": "sam-hq", "SAM 2": "sam2"}.get(found.family)
        advice = f"use the segmenter {other} for it" if other else "no xaibench segmenter reads it"
        raise UserError(f"{self.name}: checkpoint {str(path)!r} is {found.describe()}, not {expected.describe()} "
                        f"({self._asked()}); {advice}, or give {self.name} a {self.family} checkpoint")

    def _asked(self) -> str:
        return f"{self.size_param} {getattr(self, self.size_param)!r}"

    def _build_model(self):
        """The model with the checkpoint's weights, loaded strictly: a parameter missing or left over is a
        ``UserError`` (a partly loaded model would segment with random weights)."""
        path, state = self._checked()  # the checkpoint read once, for its check and its weights
        state = state["model"] if isinstance(state.get("model"), dict) else state
        model = self._architecture()
        try:
            loaded = model.load_state_dict(state, strict=False)
            problems = [f"{len(keys)} parameter(s) {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                        for what, keys in (("missing", loaded.missing_keys), ("unexpected", loaded.unexpected_keys))
                        if keys]
        except RuntimeError as exc:  # a parameter of another shape
            problems = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:3]]
        if problems:
            raise UserError(f"{self.name}: checkpoint {str(path)!r} does not fit {self._expected().describe()} "
                            f"({self._asked()}): {'; '.join(problems)}. It is damaged or edited. {self._download()}.")
        return model

    def _expected(self) -> Checkpoint:
        raise NotImplementedError

    def _urls(self) -> tuple[str, list[str]]:
        raise NotImplementedError

    def _architecture(self):
        raise NotImplementedError

    def _predictor(self, model):
        raise NotImplementedError

    def _mask_frame(self) -> int:
        raise NotImplementedError


class SamSegmenter(_SegmentAnything):
    """Segment Anything (Kirillov et al. 2023) prompted with points, boxes and a dense mask prompt.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3) RGB; one bool (H, W)
    mask per prompt set. The image embedding is computed once per call and shared by all prompt sets;
    each set's prompts go to the predictor: its points (positive and negative), its dense map (image-size
    logits, resized into the 256 × 256 low-resolution mask frame as the model's own resize and padding place
    the image; the padding gets the map's minimum) as ``mask_input``, and its boxes one at a time (their pixel
    edges as the first and last pixels' indices, the corners the model reads), each with the points inside it
    (every point where there is no box), the masks of a set's boxes united. A dense map alone is a weak
    prompt (SAM was trained to refine its own masks with it): give points or boxes beside it. With
    ``multimask`` "best", "largest" or "union" the model returns three candidate masks and the one with the
    highest predicted IoU, the one with the most pixels, or their union is kept; "single" asks for one mask.
    A prompt set marking no foreground (no positive point, box or positive dense logit) gives an all-False
    mask.

    ``checkpoint``: path to the official weights of ``model_type`` (see ``SAM_CHECKPOINT_URLS``). The
    model is loaded on the first ``segment`` call, on ``device`` ("auto": CUDA when available, else
    CPU), and kept; it is not pickled with the segmenter, so each worker process loads its own."""

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b",
        multimask: Literal["best", "largest", "union", "single"] = "best",
        device: str = "auto",
    ):
        self.checkpoint = checkpoint
        self.model_type = model_type
        self.multimask = multimask
        self.device = device
        self._model = None

    def _expected(self) -> Checkpoint:
        return Checkpoint("SAM", self.model_type)

    def _urls(self) -> tuple[str, list[str]]:
        return SAM_CHECKPOINT_URLS[self.model_type], [u for t, u in SAM_CHECKPOINT_URLS.items() if t != self.model_type]

    def _architecture(self):
        from segment_anything import sam_model_registry

        return sam_model_registry[self.model_type]()

    def _predictor(self, model):
        from segment_anything import SamPredictor

        return SamPredictor(model)

    def _mask_frame(self) -> int:
        return self._loaded_model().prompt_encoder.mask_input_size[0]


class SamHqSegmenter(SamSegmenter):
    """HQ-SAM (Ke et al. 2023): SAM with a high-quality output token, from the ``segment-anything-hq``
    package; prompted like ``sam`` (points, boxes, a dense mask; the same frame, since it keeps SAM's
    image encoder and resizing). Its decoder returns one mask: with ``multimask`` "best" it picks SAM's
    candidate with the highest predicted IoU and refines it with the HQ token; "single" asks SAM for one
    mask. ``hq_token_only``: the HQ token's mask alone (true) or added to SAM's (false, the package's
    default). ``model_type`` vit_b, vit_l, vit_h or vit_tiny (Light HQ-SAM, a TinyViT encoder);
    ``checkpoint``: the official weights (``HQ_CHECKPOINT_URLS``)."""

    name = "sam-hq"
    family = "HQ-SAM"
    package = ("segment_anything_hq", "segment-anything-hq")

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        model_type: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"] = "vit_b",
        multimask: Literal["best", "single"] = "best",
        hq_token_only: bool = False,
        device: str = "auto",
    ):
        super().__init__(checkpoint=checkpoint, multimask=multimask, device=device)
        self.model_type = model_type
        self.hq_token_only = hq_token_only

    def _expected(self) -> Checkpoint:
        return Checkpoint("HQ-SAM", self.model_type)

    def _urls(self) -> tuple[str, list[str]]:
        return HQ_CHECKPOINT_URLS[self.model_type], [u for t, u in HQ_CHECKPOINT_URLS.items() if t != self.model_type]

    def _architecture(self):
        with warnings.catch_warnings():  # its TinyViT re-registers timm model names through deprecated imports
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            from segment_anything_hq import sam_model_registry

        return sam_model_registry[self.model_type]()

    def _predictor(self, model):
        from segment_anything_hq import SamPredictor

        return SamPredictor(model)

    def _predict(self, predictor, **prompts):
        return predictor.predict(**prompts, hq_token_only=self.hq_token_only)


def _version_text(value):
    """SAM 2's version as text: YAML reads ``version: 2.1`` as a number."""
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Sam2Segmenter(_SegmentAnything):
    """SAM 2 (Ravi et al. 2024) on single images, from the ``sam2`` package: prompted like ``sam`` (points,
    boxes, a dense mask, the same ``multimask`` policies). SAM 2 stretches the image to its square input,
    so a dense map fills the whole low-resolution mask frame. ``model`` hiera_tiny, hiera_small,
    hiera_base_plus or hiera_large and ``version`` "2.1" (default) or "2.0" pick the package's config;
    ``checkpoint``: the official weights of that model and version (``SAM2_CHECKPOINT_URLS``)."""

    name = "sam2"
    family = "SAM 2"
    size_param = "model"
    package = ("sam2", "sam2")
    keep_aspect = False

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        model: Literal["hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"] = "hiera_tiny",
        version: Annotated[Literal["2.1", "2.0"], BeforeValidator(_version_text)] = "2.1",
        multimask: Literal["best", "largest", "union", "single"] = "best",
        device: str = "auto",
    ):
        self.checkpoint = checkpoint
        self.model = model
        self.version = version
        self.multimask = multimask
        self.device = device
        self._model = None

    def _expected(self) -> Checkpoint:
        return Checkpoint("SAM 2", self.model, self.version)

    def _asked(self) -> str:
        return f"model {self.model!r}, version {self.version!r}"

    def _urls(self) -> tuple[str, list[str]]:
        others = [url for (version, model), url in SAM2_CHECKPOINT_URLS.items()
                  if version == self.version and model != self.model]
        return SAM2_CHECKPOINT_URLS[self.version, self.model], others

    def config(self) -> str:
        """The package's config for ``model`` and ``version``."""
        stem = "sam2.1" if self.version == "2.1" else "sam2"
        return f"configs/{stem}/{stem}_hiera_{SAM2_CONFIGS[self.model]}.yaml"

    def _architecture(self):
        try:
            from sam2.build_sam import build_sam2
        except (ImportError, RuntimeError) as exc:
            raise UserError(f"sam2: the sam2 package cannot be imported ({type(exc).__name__}: {exc})") from None
        return build_sam2(self.config(), None, device="cpu")

    def _predictor(self, model):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        with warnings.catch_warnings():  # its transforms are scripted with the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            return SAM2ImagePredictor(model)

    def _mask_frame(self) -> int:
        return self._loaded_model().sam_prompt_encoder.mask_input_size[0]


@hookimpl
def register_segmenters(register):
    register("sam", SamSegmenter)
    register("sam-hq", SamHqSegmenter)
    register("sam2", Sam2Segmenter)
