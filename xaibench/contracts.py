"""The call contract of every component kind.

Plugins need not inherit from these classes: any object with the same methods works. They exist to
document shapes, dtypes and value ranges in one place, and to hold small shared value types.

All components are built from keyword-only parameters with defaults (the grid's parameters); ``__init__``
stores them and does no heavy work, so a grid line maps to a constructor call.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``image``: uint8 array (H, W, 3), RGB. ``label``: class index into ``Dataset.classes``.
    ``mask``: bool array (H, W), True on the pixels relevant to the label, or None where no annotation
    exists (e.g. negatives of a binary presence task). This is the annotation models are trained with.
    ``reference``: bool array (H, W), the exact relevance mask where ``mask`` is a knowingly imprecise
    annotation (the synthetic dataset's annotation noise); None where ``mask`` is the best there is, and
    then ``mask`` is its own reference. Scores against ground truth always use the reference."""

    id: str
    image: np.ndarray
    label: int
    mask: np.ndarray | None
    reference: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Point prompts for a segmenter, in image pixel coordinates.

    ``points``: float32 (N, 2) as (x, y) = (column, row), 0 <= x < W, 0 <= y < H.
    ``labels``: int64 (N,), 1 for a foreground point and 0 for a background point."""

    points: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2), got {self.points.shape}")
        if self.labels.shape != (self.points.shape[0],):
            raise ValueError(f"labels must have shape ({self.points.shape[0]},), got {self.labels.shape}")

    @property
    def positive(self) -> np.ndarray:
        return self.points[self.labels == 1]

    @property
    def negative(self) -> np.ndarray:
        return self.points[self.labels == 0]


class Dataset:
    """Kind ``datasets``: labelled images with optional relevance masks.

    ``classes``: list of class names; labels index into it.
    ``split(name)`` for name in ``"train" | "val" | "test"``: a sequence of ``Sample``; the same call gives
    the same samples in the same order every time. All images of one dataset have one size.
    ``fingerprint()``: a string that changes whenever the content changes (parameters, files); it keys
    every cached result that depends on the data.
    ``location_params`` (optional class attribute): names of parameters that only say where the data
    lives (a root folder, a download URL); they are left out of cache keys, so moving the data retrains
    nothing as long as ``fingerprint()`` is unchanged."""

    classes: list[str]
    location_params: tuple[str, ...] = ()

    def split(self, name: str) -> Sequence[Sample]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


class Mask:
    """Kind ``masks``: replaces the irrelevant background of images.

    ``__call__(images, foreground) -> images``: ``images`` float tensor (B, 3, H, W) in [0, 1];
    ``foreground`` bool tensor (B, 1, H, W). Returns a new float tensor of the same shape, device and
    dtype, equal to ``images`` where ``foreground`` is True. Inputs are never modified in place."""

    def __call__(self, images, foreground):
        raise NotImplementedError


class Backbone:
    """Kind ``backbones``: a classifier architecture.

    ``build(num_classes) -> torch.nn.Module`` mapping float images (B, 3, H, W) in [0, 1] (the module
    normalises them itself) to logits (B, num_classes).
    ``target_layers(model) -> list[torch.nn.Module]``: the layers class-activation explainers hook by
    default (for ResNets the last block)."""

    def build(self, num_classes: int):
        raise NotImplementedError

    def target_layers(self, model) -> list:
        raise NotImplementedError


class Ensemble:
    """Kind ``ensembles``: combines the logits of the raw-image and the masked-image model.

    ``__call__(raw_logits, masked_logits) -> logits``: float tensors (B, C) to (B, C); differentiable, so
    explainers can backpropagate through it. Optional ``reduces_to() -> "raw" | "masked" | None`` says
    when the rule equals one member alone, so that member's cached results are reused."""

    def __call__(self, raw_logits, masked_logits):
        raise NotImplementedError

    def reduces_to(self) -> str | None:
        return None


class Explainer:
    """Kind ``explainers``: saliency maps for a classifier's decision.

    ``explain(model, images, targets, *, target_layers, masks=None) -> np.ndarray`` float32 (B, H, W) in
    [0, 1], at the images' size. ``images`` float tensor (B, 3, H, W) in [0, 1] on the model's device;
    ``targets`` int64 tensor (B,) of the classes to explain; ``target_layers`` the backbone's default
    layers; ``masks`` bool (B, H, W) ground truth, given only to explainers that declare
    ``uses_ground_truth = True`` (calibration baselines)."""

    uses_ground_truth = False

    def explain(self, model, images, targets, *, target_layers, masks=None):
        raise NotImplementedError


class Seeder:
    """Kind ``seeders``: turns one saliency map into point prompts.

    ``__call__(saliency) -> Prompts``: ``saliency`` float32 (H, W) in [0, 1] at image size; returns
    prompts in that image's pixel coordinates. Deterministic for a given map."""

    def __call__(self, saliency: np.ndarray) -> Prompts:
        raise NotImplementedError


class Segmenter:
    """Kind ``segmenters``: point-prompted segmentation.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3) RGB; ``prompts`` a
    sequence of ``Prompts`` for that image; returns one bool (H, W) mask per prompt set. Expensive
    per-image work (e.g. an image embedding) is done once per call and shared by all prompt sets.

    Optional: ``segment_with_scores(image, prompts) -> (masks, scores)`` gives the same masks and one
    confidence per mask, a float in [0, 1] (SAM's predicted IoU); acceptance rules of the annotation loop
    can use it. Segmenters without it have NaN confidences."""

    def segment(self, image: np.ndarray, prompts: Sequence[Prompts]) -> list[np.ndarray]:
        raise NotImplementedError


class Acceptor:
    """Kind ``acceptors``: the annotation loop's rule for replacing an annotation by a segmentation.

    ``__call__(annotation, proposal, *, saliency, score) -> np.ndarray | None``: ``annotation`` bool (H, W),
    the image's current training annotation; ``proposal`` bool (H, W), the segmenter's mask prompted from
    the explanation; ``saliency`` float32 (H, W) in [0, 1], that explanation; ``score`` the segmenter's
    confidence in [0, 1], or NaN where it gives none. Returns the image's next annotation, a bool (H, W)
    mask (the proposal, or any combination), or None to keep the current one. Deterministic; inputs may
    be kept but are never modified."""

    def __call__(self, annotation: np.ndarray, proposal: np.ndarray, *, saliency: np.ndarray,
                 score: float) -> np.ndarray | None:
        raise NotImplementedError


class Executor:
    """Kind ``executors``: runs independent stage tasks.

    ``map(fn, tasks) -> iterator`` of ``fn(task)`` results in task order. ``fn`` and the tasks are
    picklable; results are small (artifacts are written by ``fn`` itself to the cache). Only the
    caller writes to the results store. ``close()`` releases workers."""

    def map(self, fn: Callable, tasks: Iterable) -> Iterator:
        raise NotImplementedError

    def close(self) -> None:
        pass
