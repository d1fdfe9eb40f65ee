"""The call contract of every component kind, as code: one ``typing.Protocol`` per kind, the optional
capabilities each kind may declare, and one validator per kind's output.

Plugins need not inherit from these classes: any object with the same methods works. Every component is
built from keyword-only parameters with defaults (the grid's parameters); ``__init__`` stores them and
does no heavy work, so a grid line maps to a constructor call.

The stage runner calls the validators on every output of every component it runs, and
``xaibench.kit.testing`` calls the same ones, so a run and a plugin's own tests hold a component to one
contract. A validator raises ``ContractViolation`` saying what was wrong; it never coerces a wrong dtype,
shape or range into a plausible one. ``capability(component, name)`` reads an optional capability, with
its documented default where the component does not declare it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from xaibench.errors import ContractViolation


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled image.

    ``image``: (H, W, C) pixels, one channel per band of the dataset (``Dataset.image_bands``; an RGB
    dataset's are red, green, blue): uint8, read as value / 255, or float32 in [0, 1] (16-bit or
    reflectance data, scaled by the dataset). ``label``: int class index into ``Dataset.classes``.
    ``mask``: bool array (H, W), True on the pixels relevant to the label, or None where no annotation
    exists (e.g. negatives of a binary presence task). This is the annotation models are trained with.
    ``reference``: bool array (H, W), the exact relevance mask where ``mask`` is a knowingly imprecise
    annotation (the synthetic dataset's annotation noise); None where ``mask`` is the best there is, and
    then ``mask`` is its own reference. Scores against ground truth always use the reference.
    ``group``: a non-empty string naming the sample's group (e.g. whether a spurious cue agrees with the
    label), or None; where test samples carry groups, accuracy is reported per group and for the worst
    group."""

    id: str
    image: np.ndarray
    label: int
    mask: np.ndarray | None
    reference: np.ndarray | None = None
    group: str | None = None


# The kinds of prompt a seeder gives and a segmenter takes (Segment Anything takes all three)
PROMPT_KINDS = ("points", "boxes", "dense")


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Prompts for a segmenter, in image pixel coordinates: points, boxes and a dense map, each optional.

    ``points``: float32 (N, 2) as (x, y) = (column, row), 0 <= x < W, 0 <= y < H.
    ``labels``: int64 (N,), 1 for a foreground point and 0 for a background point.
    ``boxes``: float32 (M, 4) as (x0, y0, x1, y1), 0 <= x0 <= x1 <= W, 0 <= y0 <= y1 <= H (pixel edges:
    a box round pixel column c alone spans c to c + 1), each round one object; or None.
    ``dense``: float32 (H, W), a mask prompt at image size in logits (positive: foreground, as Segment
    Anything's ``mask_input``; 0 undecided), or None.
    ``kinds``: the kinds present (``PROMPT_KINDS``): points where there is at least one, boxes where
    there is at least one, dense where given."""

    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray | None = None
    dense: np.ndarray | None = None

    def __post_init__(self):
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2), got {self.points.shape}")
        if self.labels.shape != (self.points.shape[0],):
            raise ValueError(f"labels must have shape ({self.points.shape[0]},), got {self.labels.shape}")
        if self.boxes is not None and (self.boxes.ndim != 2 or self.boxes.shape[1] != 4):
            raise ValueError(f"boxes must have shape (M, 4), got {self.boxes.shape}")
        if self.dense is not None and self.dense.ndim != 2:
            raise ValueError(f"dense must be one (H, W) map, got shape {self.dense.shape}")

    @property
    def kinds(self) -> frozenset[str]:
        found = set()
        if len(self.labels):
            found.add("points")
        if self.boxes is not None and len(self.boxes):
            found.add("boxes")
        if self.dense is not None:
            found.add("dense")
        return frozenset(found)

    @property
    def empty(self) -> bool:
        """Whether nothing marks an object: no foreground point, no box, and no dense map with a positive
        (foreground) logit."""
        return not len(self.positive) and "boxes" not in self.kinds and not (self.dense is not None
                                                                            and bool((self.dense > 0).any()))

    @property
    def positive(self) -> np.ndarray:
        return self.points[self.labels == 1]

    @property
    def negative(self) -> np.ndarray:
        return self.points[self.labels == 0]


def _per_band(values, count: int, what: str, *, positive: bool = False) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    low_ok = (lambda v: v > 0) if positive else (lambda v: v >= 0)
    if len(values) != count or not all(np.isfinite(v) and low_ok(v) and v <= 1 for v in values):
        raise ValueError(f"{what} is {values!r}; give one value per band ({count}), each in "
                         f"{'(0, 1]' if positive else '[0, 1]'}")
    return values


@dataclasses.dataclass(frozen=True)
class Bands:
    """The bands of a dataset's images, as the dataset declares them.

    ``names``: one distinct non-empty name per band, in the order of the images' channels (C = their
    number). ``rgb``: the 0-based positions of the bands shown as red, green and blue, the colour
    composite that figures, segmenters (SAM, GrabCut) and the report receive; a position may repeat (a
    one-band dataset shows (0, 0, 0), grey). ``mean``, ``std``, ``median``: per-band statistics of the
    training images in [0, 1] (std > 0), or None; the data stage fills in those a dataset leaves out
    (``with_statistics``), so components are given all three.

    RGB datasets are those with three bands whose composite is (0, 1, 2); ``Bands.rgb3()`` is their
    record (names red, green, blue). Components that take no ``bands`` keyword are given three-band RGB
    images and run only on such datasets."""

    names: tuple[str, ...]
    rgb: tuple[int, int, int] = (0, 1, 2)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    median: tuple[float, ...] | None = None

    def __post_init__(self):
        names = tuple(self.names) if isinstance(self.names, (list, tuple)) else None
        if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"band names {self.names!r}: give a list of distinct non-empty names, one per band")
        rgb = tuple(self.rgb) if isinstance(self.rgb, (list, tuple)) else ()
        if len(rgb) != 3 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                    and 0 <= i < len(names) for i in rgb):
            raise ValueError(f"colour composite {self.rgb!r}: give three 0-based band positions in 0..{len(names) - 1} "
                             f"(red, green, blue) of the bands {list(names)}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "rgb", tuple(int(i) for i in rgb))
        for field, positive in (("mean", False), ("std", True), ("median", False)):
            object.__setattr__(self, field, _per_band(getattr(self, field), len(names), f"band {field}",
                                                      positive=positive))

    @classmethod
    def rgb3(cls) -> "Bands":
        """The bands of an RGB dataset: red, green, blue, shown as they are."""
        return cls(("red", "green", "blue"))

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def is_rgb(self) -> bool:
        """Whether images of these bands are RGB images: three bands, shown in their own order."""
        return self.count == 3 and self.rgb == (0, 1, 2)

    @property
    def others(self) -> tuple[int, ...]:
        """The positions of the bands outside the colour composite (e.g. near-infrared)."""
        return tuple(i for i in range(self.count) if i not in self.rgb)

    def composite(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, 3) colour composite of ``pixels`` (..., H, W, C), uint8 (taken as they are) or
        float in [0, 1] (times 255, rounded)."""
        chosen = np.asarray(pixels)[..., list(self.rgb)]
        if chosen.dtype == np.uint8:
            return np.ascontiguousarray(chosen)
        return np.clip(np.rint(chosen.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)

    def with_statistics(self, mean, std, median) -> "Bands":
        """These bands with the statistics they lack filled in from ``mean``, ``std`` and ``median``."""
        return dataclasses.replace(self, mean=self.mean if self.mean is not None else tuple(mean),
                                   std=self.std if self.std is not None else tuple(std),
                                   median=self.median if self.median is not None else tuple(median))

    def describe(self) -> str:
        """E.g. ``4 bands (red, green, blue, nir; composite red, green, blue)``."""
        shown = ", ".join(self.names[i] for i in self.rgb)
        return f"{self.count} band{'s' * (self.count != 1)} ({', '.join(self.names)}; composite {shown})"


@dataclasses.dataclass(frozen=True)
class ActivationLayout:
    """How a target layer's activation maps to feature maps (B, C, h, w), as its backbone declares it.

    ``kind``: ``"channels_first"`` (B, C, h, w), as convolutional networks give; ``"channels_last"``
    (B, h, w, C), as timm's Swin stages give; ``"tokens"`` (B, prefix_tokens + h * w, C), as vision
    transformers give: ``prefix_tokens`` leading tokens that are not patches (class, distillation,
    register tokens), then the patches row by row on the ``grid`` (h, w). Build one with
    ``channels_first()``, ``channels_last()`` or ``tokens(prefix_tokens, grid)``. A tensor's layout cannot
    be read off its shape (a (B, 7, 7, 768) activation looks like 7 channels on a 7 × 768 grid), so a
    backbone says it and ``to_channels_first`` holds the activation to what was said. ``declared_by``: who
    said it (the runner fills in the backbone), named where an activation does not fit; not part of the
    layout's identity."""

    kind: str
    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    declared_by: str = dataclasses.field(default="", compare=False)

    KINDS = ("channels_first", "channels_last", "tokens")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"activation layout kind {self.kind!r}; use one of {list(self.KINDS)}")
        if self.kind == "tokens":
            grid = self.grid
            if not (isinstance(grid, tuple) and len(grid) == 2 and all(isinstance(n, int) and n > 0 for n in grid)):
                raise ValueError(f"a tokens layout needs grid=(h, w), two positive ints, not {grid!r}")
            if not isinstance(self.prefix_tokens, int) or self.prefix_tokens < 0:
                raise ValueError(f"prefix_tokens is {self.prefix_tokens!r}; give the number of leading non-patch "
                                 f"tokens, an int >= 0")
        elif self.prefix_tokens or self.grid is not None:
            raise ValueError(f"a {self.kind} layout takes no prefix_tokens or grid (only tokens layouts do)")

    @classmethod
    def channels_first(cls) -> "ActivationLayout":
        return cls("channels_first")

    @classmethod
    def channels_last(cls) -> "ActivationLayout":
        return cls("channels_last")

    @classmethod
    def tokens(cls, prefix_tokens: int, grid: tuple[int, int]) -> "ActivationLayout":
        return cls("tokens", prefix_tokens, tuple(grid))

    def __str__(self) -> str:
        if self.kind == "tokens":
            h, w = self.grid
            return f"tokens ({self.prefix_tokens} prefix + {h}×{w} patches, (B, {self.prefix_tokens + h * w}, C))"
        return f"{self.kind} ({'(B, C, h, w)' if self.kind == 'channels_first' else '(B, h, w, C)'})"

    def to_channels_first(self, activation, layer: str = "the target layer"):
        """``activation`` (a torch tensor in this layout, or its gradient) as (B, C, h, w): prefix tokens
        dropped, patches reshaped to the grid, channels moved first (a view where torch allows). Raises
        ``ContractViolation`` naming ``layer`` where the tensor's shape does not fit the layout."""
        shape = tuple(getattr(activation, "shape", ()))
        if self.kind == "tokens":
            h, w = self.grid
            if len(shape) == 3 and shape[1] == self.prefix_tokens + h * w:
                patches = activation[:, self.prefix_tokens:, :]
                return patches.reshape(shape[0], h, w, shape[2]).permute(0, 3, 1, 2)
        elif len(shape) == 4:
            return activation if self.kind == "channels_first" else activation.permute(0, 3, 1, 2)
        given = f"{shape}" if shape else type(activation).__name__
        hint = (" (the grid is the model's image size over its patch size: build the model for the images' size)"
                if self.kind == "tokens" and len(shape) == 3 else "")
        by = f" by {self.declared_by}" if self.declared_by else ""
        raise ContractViolation(f"layer {layer!r} gave an activation of shape {given}, which is not its layout "
                                f"{self} as declared{by}{hint}; declare the layout it has, or target another layer")


# -- the kinds -------------------------------------------------------------------------------------------
# Each Protocol lists the members a component of its kind must have; OPTIONAL lists, per kind, the
# capabilities it may declare and the default assumed where it does not.


class Dataset(Protocol):
    """Kind ``datasets``: labelled images with optional relevance masks.

    ``classes``: list of at least two distinct class names; labels index into it.
    ``split(name)`` for name in ``"train" | "val" | "test"``: a sequence of ``Sample``; the same call gives
    the same samples in the same order every time. All images of one dataset have one size.
    ``fingerprint()``: a string that changes whenever the content changes (parameters, files); it keys
    every cached result that depends on the data.

    Optional: ``image_bands``: a ``Bands`` naming the images' bands, which three form the colour composite
    and, if the dataset knows them, per-band statistics (default ``Bands.rgb3()``: RGB images).
    ``location_params`` (class attribute): names of parameters that only say where the data
    lives (a root folder, a download URL); they are left out of cache keys. ``check()``: raise a
    ``UserError`` when the data is missing, before a run starts (a check that would download it takes
    ``fetch``: a dry run passes ``fetch=False`` and gets ``NotFetched`` instead). ``fetch()``: download the data.
    ``prepare(**options)`` (static method): build a dataset folder from raw sources. ``describe()``: a
    dict of dataset-specific facts for ``xaibench data info``."""

    classes: Sequence[str]

    def split(self, name: str) -> Sequence[Sample]: ...

    def fingerprint(self) -> str: ...


class Mask(Protocol):
    """Kind ``masks``: replaces the irrelevant background of images.

    ``__call__(images, foreground) -> images``: ``images`` float tensor (B, C, H, W) in [0, 1], one channel
    per band; ``foreground`` bool tensor (B, 1, H, W). Returns a new float tensor of the same shape, device
    and dtype, in [0, 1], equal to ``images`` where ``foreground`` is True. Inputs are never modified.

    Optional: ``bands`` (whether ``__call__`` takes that keyword): a mask that takes ``bands`` is given the
    dataset's ``Bands`` and works on any number of bands; one that does not is given RGB images
    (B, 3, H, W) and its cells fail on datasets of other bands. ``check()``."""

    def __call__(self, images, foreground): ...


class Backbone(Protocol):
    """Kind ``backbones``: a classifier architecture.

    ``build(num_classes, *, pretrained=True) -> torch.nn.Module`` mapping float images (B, C, H, W) in
    [0, 1], one channel per band (the module normalises them itself), to finite float logits (B, num_classes). The runner seeds
    torch's global generator before ``build``. ``pretrained=False`` asks for the architecture alone (its
    weights are replaced at once by a stage's); a backbone whose ``build`` takes no ``pretrained`` is
    called without it.
    ``target_layers(model) -> list[torch.nn.Module]``: modules of ``model`` that class-activation
    explainers hook by default (for ResNets the last block).

    Optional: ``pretrained`` (the keyword of ``build``), ``bands`` (whether ``build`` takes that keyword):
    a backbone that takes ``bands`` is given the dataset's ``Bands`` (statistics filled in) and builds a
    module for ``bands.count`` input channels; one that does not is built for RGB images and its cells fail
    on datasets of other bands. ``check()``: raise a ``UserError`` when weights
    cannot be had (one that would download them takes ``fetch``, False in a dry run: raise ``NotFetched``).
    ``activation_layout(model, layer) -> ActivationLayout | None``: how the output of
    ``layer``, a module of ``model``, maps to (B, C, h, w) (channels-first, channels-last, or tokens with
    their prefix and patch grid), for the default target layers and any other a grid may name; None where
    the backbone does not know. Class-activation explainers read every activation through it: a layer
    whose layout is not declared fails its cell, naming the layer, rather than giving a map."""

    def build(self, num_classes: int, *, pretrained: bool = True): ...

    def target_layers(self, model) -> list: ...


class Ensemble(Protocol):
    """Kind ``ensembles``: combines the logits of the raw-image and the masked-image model.

    ``__call__(raw_logits, masked_logits) -> logits``: float tensors (B, C) to finite (B, C) of the same
    dtype and device; differentiable, so explainers can backpropagate through it.

    Optional: ``reduces_to() -> "raw" | "masked" | None`` says when the rule equals one member alone, so
    that member's cached results are reused. ``mixing_parameter`` (class attribute): the name of the
    keyword parameter that is the raw model's weight α in [0, 1]; tables show such a rule's rows as α
    values and the accuracy-against-α figure sweeps it. ``check()``."""

    def __call__(self, raw_logits, masked_logits): ...


class Explainer(Protocol):
    """Kind ``explainers``: saliency maps for a classifier's decision.

    ``explain(model, images, targets, *, target_layers, masks=None) -> np.ndarray`` float32 (B, H, W) in
    [0, 1], finite, at the images' size. ``images`` float tensor (B, C, H, W) in [0, 1] on the model's
    device, one channel per band; ``targets`` int64 tensor (B,) of the classes to explain; ``target_layers`` the backbone's
    default layers; ``masks`` bool (B, H, W) ground truth, given only to explainers that declare
    ``uses_ground_truth = True`` (calibration baselines).

    Optional: ``uses_ground_truth`` (default False), ``check()``. ``bands`` (whether ``explain`` takes that
    keyword): an explainer that takes ``bands`` is given the dataset's ``Bands`` and explains images of any
    number of bands; one that does not is given RGB images and its cells fail on datasets of other bands.
    ``layouts`` (whether ``explain`` takes
    that keyword): explainers that hook layers take ``layouts``, a function ``layouts(layer) ->
    ActivationLayout`` for any module of ``model`` (an ensemble's members included), the backbone's
    declaration; it raises, naming the layer and what to declare, where the backbone declares none."""

    def explain(self, model, images, targets, *, target_layers, masks=None): ...


class Seeder(Protocol):
    """Kind ``seeders``: turns one saliency map into prompts.

    ``__call__(saliency) -> Prompts``: ``saliency`` float32 (H, W) in [0, 1] at image size; returns
    ``Prompts`` in that image's pixel coordinates, (x, y) = (column, row), float32, inside the image,
    labels 0 or 1; boxes inside the image; a dense map of the image's size, finite. Foreground points mark
    salient places: the most salient of them lies on a pixel at least as salient as the map's mean.
    Deterministic for a given map.

    Optional: ``prompt_kinds`` (class attribute, default ``("points",)``): the kinds of prompt it gives
    (``PROMPT_KINDS``); it gives no other, and a grid pairs it only with segmenters that take them all.
    ``check()``."""

    def __call__(self, saliency: np.ndarray) -> Prompts: ...


class Segmenter(Protocol):
    """Kind ``segmenters``: prompted segmentation.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3), the dataset's colour
    composite (``Bands.composite``; an RGB dataset's image as it is); ``prompts`` a
    sequence of ``Prompts`` for that image; returns one bool (H, W) mask per prompt set. Expensive
    per-image work (e.g. an image embedding) is done once per call and shared by all prompt sets.
    Deterministic: a call with the same image and prompts (and saliency) as one made earlier in the
    process is answered from memory, without calling it.

    Optional: ``prompt_kinds`` (class attribute, default ``("points",)``): the kinds of prompt it takes
    (``PROMPT_KINDS``); a grid pairing it with a seeder that gives another kind is refused before the run.
    ``uses_saliency`` (default False): when True, ``segment`` (and ``segment_with_scores``) is
    also given ``saliency``, one float32 (H, W) map in [0, 1] per prompt set. ``segment_with_scores(image,
    prompts) -> (masks, scores)``: the same masks and one confidence per mask, a float in [0, 1] (SAM's
    predicted IoU) or NaN; acceptance rules of the annotation loop can use it. ``check()``."""

    def segment(self, image: np.ndarray, prompts: Sequence[Prompts]) -> list[np.ndarray]: ...


class Acceptor(Protocol):
    """Kind ``acceptors``: the annotation loop's rule for replacing an annotation by a segmentation.

    ``__call__(annotation, proposal, *, saliency, score) -> np.ndarray | None``: ``annotation`` bool (H, W),
    the image's current training annotation; ``proposal`` bool (H, W), the segmenter's mask prompted from
    the explanation; ``saliency`` float32 (H, W) in [0, 1], that explanation; ``score`` the segmenter's
    confidence in [0, 1], or NaN where it gives none. Returns the image's next annotation, a bool (H, W)
    mask (the proposal, or any combination), or None to keep the current one. Deterministic; inputs may
    be kept but are never modified.

    Optional: ``check()``."""

    def __call__(self, annotation: np.ndarray, proposal: np.ndarray, *, saliency: np.ndarray,
                 score: float) -> np.ndarray | None: ...


class Executor(Protocol):
    """Kind ``executors``: runs independent stage tasks.

    ``map(fn, tasks) -> iterator`` of ``fn(task)`` results, one per task, in task order; where the worker
    running a task died (killed, out of memory), an ``xaibench.errors.WorkerLost`` in that task's place,
    and the other tasks go on. ``fn`` and the tasks are picklable; results are small (artifacts are
    written by ``fn`` itself to the cache). Only the caller writes to the results store.

    Optional: ``close()`` releases workers; ``check()`` fails early when workers cannot be had (an
    unreachable cluster). ``submit(fn, task) -> ticket``, ``next_result() -> (ticket, result)`` (blocks
    until a submitted task has finished; a ``WorkerLost`` result where its worker died) and ``slots``
    (how many tasks run at once) together let a run start each stage as soon as its own inputs are done;
    an executor with ``map`` alone runs the stages wave by wave. ``check_folder(folder)`` raises a
    ``UserError`` when its workers cannot read and write the run folder (a cluster without shared
    storage), before any stage runs."""

    def map(self, fn: Callable, tasks: Iterable) -> Iterator: ...


PROTOCOLS = {"datasets": Dataset, "masks": Mask, "backbones": Backbone, "ensembles": Ensemble,
             "explainers": Explainer, "seeders": Seeder, "segmenters": Segmenter, "acceptors": Acceptor,
             "executors": Executor}

OPTIONAL: dict[str, dict[str, object]] = {
    "datasets": {"location_params": (), "path_params": (), "check": None, "fetch": None, "prepare": None,
                 "describe": None, "source_files": None, "georeference": None, "image_bands": None},
    "masks": {"bands": False, "check": None},
    "backbones": {"pretrained": True, "bands": False, "path_params": (), "check": None, "activation_layout": None},
    "ensembles": {"reduces_to": None, "mixing_parameter": None, "check": None},
    "explainers": {"uses_ground_truth": False, "layouts": False, "bands": False, "check": None},
    "seeders": {"prompt_kinds": ("points",), "check": None},
    "segmenters": {"prompt_kinds": ("points",), "uses_saliency": False, "segment_with_scores": None, "path_params": (), "check": None},
    "acceptors": {"check": None},
    "executors": {"close": None, "check": None, "check_folder": None, "submit": None, "next_result": None,
                  "slots": None},
}


def required(kind: str) -> list[str]:
    """The members a component of ``kind`` must have, read off its Protocol."""
    protocol = PROTOCOLS[kind]
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and (not n.startswith("_") or n == "__call__")]
    return list(dict.fromkeys(names))


def capability(component, name: str, kind: str):
    """The optional capability ``name`` of ``component`` of ``kind``, or its default where it is not
    declared. ``pretrained`` (backbones) is whether ``build`` takes that keyword, ``layouts`` (explainers)
    whether ``explain`` does, ``bands`` whether a mask's ``__call__``, a backbone's ``build`` or an
    explainer's ``explain`` does."""
    if name not in OPTIONAL[kind]:
        raise KeyError(f"{kind} have no optional capability {name!r}; they have {sorted(OPTIONAL[kind])}")
    keyword = {("backbones", "pretrained"): "build", ("explainers", "layouts"): "explain", ("masks", "bands"): "__call__",
               ("backbones", "bands"): "build", ("explainers", "bands"): "explain"}.get((kind, name))
    if keyword is not None:
        try:
            return name in inspect.signature(getattr(component, keyword)).parameters
        except (TypeError, ValueError, AttributeError):
            return OPTIONAL[kind][name]
    return getattr(component, name, OPTIONAL[kind][name])


def band_arguments(component, kind: str, bands: Bands) -> dict:
    """The keyword arguments giving ``component`` of ``kind`` (masks, backbones, explainers) the dataset's
    ``bands``: ``{"bands": bands}`` where it takes that keyword, none where it does not and the images are
    RGB. Where it does not and they are not, ``ContractViolation``: it was written for three-band RGB
    images, and cutting the dataset's bands down to three for it would be a silent truncation."""
    if capability(component, "bands", kind):
        return {"bands": bands}
    if bands.is_rgb:
        return {}
    method = {"masks": "__call__", "backbones": "build", "explainers": "explain"}[kind]
    raise ContractViolation(f"takes RGB images only (its {method} has no 'bands' keyword), but the dataset's images "
                            f"have {bands.describe()}; use a {kind[:-1]} that takes bands, or choose the dataset's "
                            f"red, green and blue bands alone (e.g. the folder dataset's 'bands: [1, 2, 3]')")


# -- validators ------------------------------------------------------------------------------------------
# Each raises ContractViolation with what was wrong; the caller names the component and its input.


def _describe(value) -> str:
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None:
        return type(value).__name__
    return f"{str(dtype).removeprefix('torch.')} {tuple(shape)}"


def _values(array: np.ndarray, limit: int = 4) -> str:
    found = np.unique(array[np.isfinite(array)] if array.dtype.kind == "f" else array)
    shown = ", ".join(f"{v:g}" if array.dtype.kind == "f" else str(v) for v in found[:limit])
    return shown + (f", ... ({len(found)} distinct)" if len(found) > limit else "")


def validate_mask_array(array, what: str, shape: tuple) -> None:
    """A bool numpy (H, W) mask of ``shape``: no other dtype is taken as a mask."""
    if not isinstance(array, np.ndarray) or array.dtype != bool:
        detail = f" with values {_values(array)}" if isinstance(array, np.ndarray) and array.dtype.kind in "fiu" else ""
        raise ContractViolation(f"{what} is {_describe(array)}{detail}; a mask is a bool numpy array (H, W), True "
                                f"on the relevant pixels (convert it yourself, e.g. mask > 0.5)")
    if array.shape != tuple(shape):
        raise ContractViolation(f"{what} has shape {array.shape}; it must match the image, {tuple(shape)}")


def validate_classes(classes) -> None:
    """A dataset's ``classes``: a list of at least two distinct class-name strings."""
    if not isinstance(classes, (list, tuple)) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise ContractViolation(f"classes is {classes!r}; give a list of at least two distinct class names")


def validate_bands(bands) -> None:
    """A dataset's ``image_bands``: a ``Bands``."""
    if not isinstance(bands, Bands):
        raise ContractViolation(f"image_bands is {type(bands).__name__}; declare the bands as "
                                f"xaibench.kit.contracts.Bands(names, rgb)")


def validate_sample(sample, num_classes: int, bands: Bands | None = None) -> None:
    """One dataset sample: a ``Sample`` with a (H, W, C) image of the dataset's ``bands`` (C of them; three,
    RGB, where None), uint8 or float32 in [0, 1], an int label in range, bool masks of the image's size
    (a reference only beside a mask) and a group that is None or a non-empty string."""
    if not all(hasattr(sample, f) for f in ("id", "image", "label", "mask")):
        raise ContractViolation(f"split() gave a {type(sample).__name__}; return xaibench.kit.contracts.Sample objects")
    image = sample.image
    bands = bands or Bands.rgb3()
    if not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.float32) or image.ndim != 3 \
            or image.shape[2] != bands.count:
        raise ContractViolation(f"sample {sample.id!r}: image is {_describe(image)}; images are numpy arrays (H, W, "
                                f"{bands.count}), one channel per band of {bands.describe()}, uint8 or float32 in "
                                f"[0, 1]")
    if image.dtype == np.float32 and image.size and not (np.isfinite(image).all() and image.min() >= 0
                                                         and image.max() <= 1):
        found = image[np.isfinite(image)]
        shown = f"[{found.min():g}, {found.max():g}]" if found.size else "no finite values"
        raise ContractViolation(f"sample {sample.id!r}: float image values {shown}"
                                f"{' and NaN or inf' if found.size < image.size else ''}; float images are in [0, 1] "
                                f"(scale them, and give no-data pixels a value)")
    label = sample.label
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
        raise ContractViolation(f"sample {sample.id!r}: label {label!r} is not an int class index in "
                                f"0..{num_classes - 1}")
    reference = getattr(sample, "reference", None)
    if sample.mask is not None:
        validate_mask_array(sample.mask, f"sample {sample.id!r}: mask", image.shape[:2])
    if reference is not None:
        if sample.mask is None:
            raise ContractViolation(f"sample {sample.id!r} has a reference but no mask; a reference is the exact "
                                    f"version of an annotation, so give both or neither")
        validate_mask_array(reference, f"sample {sample.id!r}: reference", image.shape[:2])
    group = getattr(sample, "group", None)
    if group is not None and (not isinstance(group, str) or not group):
        raise ContractViolation(f"sample {sample.id!r}: group {group!r} is not a non-empty string; give a group "
                                f"name or None")


def validate_masked(out, images, foreground) -> None:
    """A mask's output: a new tensor of the images' shape, dtype and device, in [0, 1], equal to the
    images on every foreground pixel."""
    import torch

    if not isinstance(out, torch.Tensor) or out.shape != images.shape or out.dtype != images.dtype \
            or out.device != images.device:
        raise ContractViolation(f"returned {_describe(out)} on {getattr(out, 'device', '?')} for images "
                                f"{_describe(images)} on {images.device}; return a tensor of the images' shape, "
                                f"dtype and device")
    if not bool(torch.isfinite(out).all()) or float(out.min()) < 0 or float(out.max()) > 1:
        raise ContractViolation(f"returned values in [{float(out.min()):g}, {float(out.max()):g}] (or non-finite); "
                                f"masked images stay in [0, 1]")
    keep = foreground.expand_as(images)
    changed = int((out[keep] != images[keep]).sum())
    if changed:
        raise ContractViolation(f"changed {changed} of {int(keep.sum())} foreground pixel values; a mask replaces "
                                f"the background only and leaves every foreground pixel exactly as it was")


def validate_model(model) -> None:
    """What ``Backbone.build`` returns: a ``torch.nn.Module``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ContractViolation(f"build() returned {type(model).__name__}; return a torch.nn.Module")


def validate_logits(logits, batch: int, num_classes: int) -> None:
    """A model's (or an ensemble's) logits: finite float (batch, num_classes)."""
    shape = tuple(getattr(logits, "shape", ()))
    kind = str(getattr(logits, "dtype", "")).removeprefix("torch.")
    if shape != (batch, num_classes) or not kind.startswith(("float", "bfloat")):
        raise ContractViolation(f"gave logits {_describe(logits)} for {batch} images of {num_classes} classes; "
                                f"logits are float ({batch}, {num_classes})")
    finite = np.isfinite(np.asarray(logits.detach().float().cpu() if hasattr(logits, "detach") else logits)).all()
    if not finite:
        raise ContractViolation("gave non-finite logits (NaN or inf)")


def validate_layers(layers, model) -> None:
    """``Backbone.target_layers``: a non-empty list of the model's own modules."""
    modules = {id(m) for m in model.modules()}
    if not isinstance(layers, (list, tuple)) or not layers or not all(id(layer) in modules for layer in layers):
        raise ContractViolation("target_layers(model) is not a non-empty list of the model's own modules")


def validate_layout(layout, layer: str) -> None:
    """``Backbone.activation_layout(model, layer)``: an ``ActivationLayout``; None (or no such method) means
    the backbone does not say, and a layer a CAM hooks must be said."""
    if not isinstance(layout, ActivationLayout):
        found = "declares no activation layout" if layout is None else f"gave {type(layout).__name__} as the layout"
        raise ContractViolation(
            f"{found} for layer {layer!r}; class-activation explainers need to know how its output maps to (B, C, "
            f"h, w): give the backbone an activation_layout(model, layer) method returning "
            f"xaibench.kit.contracts.ActivationLayout.channels_first(), .channels_last() or .tokens(prefix_tokens, "
            f"grid) for it")


def validate_ensemble(out, raw) -> None:
    """An ensemble rule's output: finite logits of the members' shape, dtype and device."""
    import torch

    if not isinstance(out, torch.Tensor) or out.shape != raw.shape or out.dtype != raw.dtype or out.device != raw.device:
        raise ContractViolation(f"returned {_describe(out)} for member logits {_describe(raw)}; return logits of the "
                                f"members' shape, dtype and device")
    if not bool(torch.isfinite(out).all()):
        raise ContractViolation("returned non-finite logits (NaN or inf)")


def apply_ensemble(rule, raw, masked):
    """The logits an ensemble ``rule`` mixes from the members' ``raw`` and ``masked`` logits, held to the
    ensemble contract (``validate_ensemble``, raising ``ContractViolation``). Scoring, explanations and
    figures all mix through this, so no caller skips the check."""
    out = rule(raw, masked)
    validate_ensemble(out, raw)
    return out


def validate_maps(maps, batch: int, height: int, width: int) -> None:
    """An explainer's output: a float32 numpy array (batch, height, width), finite, in [0, 1]."""
    if not isinstance(maps, np.ndarray) or maps.dtype != np.float32 or maps.shape != (batch, height, width):
        raise ContractViolation(f"returned {_describe(maps)}; expected a float32 numpy array ({batch}, {height}, "
                                f"{width}): one map per image at the images' size")
    bad = ~np.isfinite(maps).all(axis=(1, 2))
    if bad.any():
        raise ContractViolation(f"{int(bad.sum())} of {batch} maps hold NaN or inf; every map is finite")
    low, high = float(maps.min()), float(maps.max())
    if low < 0 or high > 1:
        raise ContractViolation(f"returned values in [{low:g}, {high:g}]; maps are in [0, 1] (scale each map, e.g. "
                                f"per-image min-max)")


def _box_and_dense_problem(prompts, height: int, width: int) -> str | None:
    """What is wrong with the boxes or the dense map of ``prompts`` for an image of ``height`` × ``width``."""
    boxes, dense = prompts.boxes, prompts.dense
    if boxes is not None:
        if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32:
            return f"gave boxes {_describe(boxes)}; boxes are float32 (M, 4), (x0, y0, x1, y1)"
        inside = np.isfinite(boxes).all(axis=1) & (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) \
            & (boxes[:, 2] <= width) & (boxes[:, 3] <= height) & (boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])
        if not inside.all():
            x0, y0, x1, y1 = boxes[np.flatnonzero(~inside)[0]]
            return (f"gave the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}); boxes are (x0, y0, x1, y1) with 0 <= x0 <= x1 <= "
                    f"{width} and 0 <= y0 <= y1 <= {height}")
    if dense is not None:
        if not isinstance(dense, np.ndarray) or dense.dtype != np.float32 or dense.shape != (height, width):
            return f"gave a dense prompt {_describe(dense)}; it is float32 ({height}, {width}), the image's size"
        if not np.isfinite(dense).all():
            return "gave a dense prompt holding NaN or inf; it is finite logits"
    return None


def validate_prompts(prompts, saliency: np.ndarray) -> None:
    """A seeder's output for ``saliency`` (H, W): ``Prompts`` with float32 points (x, y) inside the image,
    int64 labels in {0, 1}, and the most salient foreground point on a pixel at least as salient as the
    map's mean (unless the points read as (row, col) are no more salient: then the map cannot tell)."""
    validate_prompt_sets([prompts], np.asarray(saliency)[None])


def validate_prompt_sets(prompt_sets: list, maps: np.ndarray, kinds=None) -> None:
    """``validate_prompts`` for a seeder's outputs on ``maps`` (M, H, W) at once (one set per map), in a
    few array operations for the whole lot; ``kinds``, where given, the prompt kinds the seeder declares
    (no set may hold another). The ``ContractViolation`` raised has ``index``: the map whose prompts broke
    the contract first."""
    def violation(index, message):
        error = ContractViolation(message)
        error.index = index
        return error

    height, width = maps.shape[1:]
    for i, prompts in enumerate(prompt_sets):
        if not isinstance(prompts, Prompts):
            raise violation(i, f"returned {type(prompts).__name__}; return xaibench.kit.contracts.Prompts")
        if not isinstance(prompts.points, np.ndarray) or prompts.points.dtype != np.float32:
            raise violation(i, f"gave points {_describe(prompts.points)}; points are float32 (N, 2)")
        if not isinstance(prompts.labels, np.ndarray) or prompts.labels.dtype != np.int64:
            raise violation(i, f"gave labels {_describe(prompts.labels)}; labels are int64 (N,)")
        problem = _box_and_dense_problem(prompts, height, width)
        if problem:
            raise violation(i, problem)
        if kinds is not None and not prompts.kinds <= set(kinds):
            extra = sorted(prompts.kinds - set(kinds))
            raise violation(i, f"gave {' and '.join(extra)} prompts but declares prompt_kinds {tuple(kinds)}; declare "
                               f"every kind it gives (a grid pairs it only with segmenters that take them)")
    counts = np.array([len(p.labels) for p in prompt_sets], dtype=np.int64)
    if not counts.sum():
        return
    owner = np.repeat(np.arange(len(prompt_sets)), counts)
    points = np.concatenate([p.points for p in prompt_sets])
    labels = np.concatenate([p.labels for p in prompt_sets])
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        i = owner[bad][0]
        raise violation(i, f"gave labels {_values(prompt_sets[i].labels)}; a label is 1 (foreground) or 0 "
                           f"(background)")
    x, y = points[:, 0], points[:, 1]
    outside = ~(np.isfinite(points).all(axis=1) & (x >= 0) & (x < width) & (y >= 0) & (y < height))
    if outside.any():
        i = owner[outside][0]
        mine = outside[owner == i]
        first = prompt_sets[i].points[np.flatnonzero(mine)[0]]
        raise violation(i, f"{int(mine.sum())} of {len(mine)} points outside the {width}×{height} image, e.g. "
                           f"({first[0]:g}, {first[1]:g}); points are (x=column, y=row) with 0 <= x < {width} and "
                           f"0 <= y < {height}")
    positive = labels == 1
    if not positive.any():
        return
    which = owner[positive]
    rows = np.floor(y[positive] + 0.5).astype(np.int64)
    cols = np.floor(x[positive] + 0.5).astype(np.int64)
    best = np.full(len(prompt_sets), np.inf)
    swapped = np.full(len(prompt_sets), -np.inf)
    best[np.unique(which)] = -np.inf
    np.maximum.at(best, which, maps[which, rows, cols])
    transposed = (cols < height) & (rows < width)  # where (row, col) would still be inside the image
    np.maximum.at(swapped, which[transposed], maps[which[transposed], cols[transposed], rows[transposed]])
    flat = maps.reshape(len(maps), -1)
    means = flat.mean(axis=1)
    varies = flat.max(axis=1) > flat.min(axis=1)
    broken = np.flatnonzero(varies & (best < means) & (swapped > best))
    if len(broken):
        i = broken[0]
        raise violation(i, f"the most salient of its {int((which == i).sum())} foreground points lies on saliency "
                           f"{best[i]:.3g}, below the map's mean {means[i]:.3g}, while the same points read as (row, "
                           f"col) reach {swapped[i]:.3g}; points are (x=column, y=row), not (row, col)")


def validate_segmentation(masks, n_prompts: int, height: int, width: int, scores=None) -> None:
    """A segmenter's output: one bool numpy (H, W) mask per prompt set; confidences, where given, one
    float per mask in [0, 1] or NaN."""
    if not hasattr(masks, "__len__") or len(masks) != n_prompts:
        raise ContractViolation(f"returned {len(masks) if hasattr(masks, '__len__') else type(masks).__name__} masks "
                                f"for {n_prompts} prompt sets; return one mask per prompt set")
    for i, mask in enumerate(masks):
        validate_mask_array(mask, f"mask {i + 1} of {n_prompts}", (height, width))
    if scores is not None:
        values = np.asarray(scores, dtype=np.float64) if np.ndim(scores) == 1 else None
        if values is None or len(values) != n_prompts or ((values < 0) | (values > 1)).any():
            raise ContractViolation(f"segment_with_scores gave scores {scores!r}; give one confidence per mask, a "
                                    f"float in [0, 1] or NaN")


def validate_annotation(out, shape: tuple) -> None:
    """An acceptor's output: None (keep the annotation) or a bool numpy mask of the annotation's shape."""
    if out is not None:
        validate_mask_array(out, "the returned annotation", shape)


def validate_result(result, key: str) -> None:
    """One result of an executor's ``map``: the result of the task in its position (a stage result
    carrying that task's key), so results come one per task, in task order (a ``WorkerLost`` in a task's
    place is handled by the caller)."""
    if getattr(result, "key", None) != key:
        found = getattr(result, "key", None) or type(result).__name__
        raise ContractViolation(f"map() gave a result for {found!r} where the task was {key!r}; give one result per "
                                f"task, in task order")


VALIDATORS = {"datasets": validate_sample, "masks": validate_masked, "backbones": validate_logits,
              "ensembles": validate_ensemble, "explainers": validate_maps, "seeders": validate_prompts,
              "segmenters": validate_segmentation, "acceptors": validate_annotation, "executors": validate_result}
