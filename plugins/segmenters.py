"""Prompted segmenters without learned weights: the random walker, marker watershed, GrabCut, and
``cam-threshold``, the thresholded saliency map itself: the floor every segmenter must beat. (Segment
Anything's families are in ``sam``.)

The classical segmenters take points, boxes and dense prompts (``prompt_kinds``): they turn prompts into a
marker image (``seed_markers``) and grow the foreground marker over the image; ``cam-threshold`` ignores the
prompts, so it takes every kind.

Optional contract: a segmenter class with ``uses_saliency = True`` is called as
``segment(image, prompts, *, saliency)``, with ``saliency`` a list of float32 (H, W) maps in [0, 1], one
per prompt set (the map the prompts were seeded from).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Sequence

import numpy as np
from pydantic import Field

from xaibench.kit.contracts import Prompts
from xaibench.kit.hookspecs import hookimpl
from xaibench.pipeline.metrics import binarise

UNLABELLED, FOREGROUND, BACKGROUND = 0, 1, 2


# -- markers ----------------------------------------------------------------------------------------


def seed_markers(shape: tuple[int, int], prompts: Prompts, *, seed_radius: int, border: int) -> np.ndarray:
    """The marker image of one prompt set: int32 (H, W) of ``UNLABELLED``, ``FOREGROUND``, ``BACKGROUND``.

    Foreground: discs of radius ``seed_radius`` around the positive points and the centres of the boxes,
    and the pixels where a dense prompt is positive. Background: the discs around the negative points;
    where there are boxes, every pixel more than ``border`` pixels outside all of them (a box says its
    object is inside it); where there is a dense prompt, its negative pixels more than ``border`` pixels
    from its positive ones. With none of these, the image border, a ring ``border``
    pixels wide, minus every pixel within ``seed_radius + border`` of a positive point. That gap keeps
    at least ``border`` unlabelled pixels between the two labels, so a region that touches the image
    edge (common for land cover) is not cut off right at its seed. Where discs overlap, foreground
    wins: a click on the object is explicit, a background assumption is not. Points are rounded to
    the nearest pixel and clipped to the image. Where no background pixel is left (a tiny image), the
    segmenters return an all-True mask: every pixel is reached by the foreground alone."""
    boxes = prompts.boxes if prompts.boxes is not None else np.zeros((0, 4), np.float32)
    centres = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2 - 0.5, (boxes[:, 1] + boxes[:, 3]) / 2 - 0.5])
    foreground = _discs(shape, np.concatenate([prompts.positive, centres]), seed_radius)
    background = _discs(shape, prompts.negative, seed_radius)
    if len(boxes):
        background |= ~_inside_boxes(shape, boxes, border)
    if prompts.dense is not None:
        from scipy import ndimage

        positive = prompts.dense > 0
        foreground |= positive
        near = ndimage.binary_dilation(positive, iterations=border) if positive.any() else positive
        background |= (prompts.dense < 0) & ~near
    if not len(boxes) and not len(prompts.negative) and prompts.dense is None:
        background = _border_ring(shape, border) & ~_discs(shape, prompts.positive, seed_radius + border)
    markers = np.full(shape, UNLABELLED, dtype=np.int32)
    markers[background] = BACKGROUND
    markers[foreground] = FOREGROUND
    return markers


def _discs(shape: tuple[int, int], points: np.ndarray, radius: int) -> np.ndarray:
    """Bool mask of the pixels within ``radius`` (inclusive) of any (x, y) point."""
    rows = np.arange(shape[0])[:, None]
    cols = np.arange(shape[1])[None, :]
    mask = np.zeros(shape, dtype=bool)
    for x, y in points:
        col = min(max(int(round(float(x))), 0), shape[1] - 1)
        row = min(max(int(round(float(y))), 0), shape[0] - 1)
        mask |= (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
    return mask


def _inside_boxes(shape: tuple[int, int], boxes: np.ndarray, margin: int) -> np.ndarray:
    """Bool mask of the pixels inside any box (x0, y0, x1, y1, pixel edges) grown by ``margin`` pixels."""
    inside = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        rows = slice(max(int(np.floor(y0)) - margin, 0), min(int(np.ceil(y1)) + margin, shape[0]))
        cols = slice(max(int(np.floor(x0)) - margin, 0), min(int(np.ceil(x1)) + margin, shape[1]))
        inside[rows, cols] = True
    return inside


def _border_ring(shape: tuple[int, int], width: int) -> np.ndarray:
    ring = np.ones(shape, dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    return image


class _MarkerSegmenter:
    """Shared ``segment`` loop of the marker-based segmenters, which take points, boxes and dense prompts.

    Subclasses implement ``_prepare(image)`` (per-image work, done once per call) and
    ``_foreground(prepared, markers) -> bool (H, W)`` for markers holding both labels."""

    prompt_kinds = ("points", "boxes", "dense")

    def segment(self, image: np.ndarray, prompts: Sequence[Prompts]) -> list[np.ndarray]:
        image = _check_image(image)
        shape = image.shape[:2]
        prepared = None
        masks = []
        for prompt_set in prompts:
            if prompt_set.empty:
                masks.append(np.zeros(shape, dtype=bool))
                continue
            markers = seed_markers(shape, prompt_set, seed_radius=self.seed_radius, border=self.border)
            if not (markers == FOREGROUND).any():  # a dense prompt that marks nothing
                masks.append(np.zeros(shape, dtype=bool))
                continue
            if not (markers == BACKGROUND).any():
                # Nothing marks the background, so every pixel is reached only by the foreground.
                masks.append(np.ones(shape, dtype=bool))
                continue
            if prepared is None:
                prepared = self._prepare(image)
            masks.append(np.asarray(self._foreground(prepared, markers), dtype=bool))
        return masks

    def _prepare(self, image: np.ndarray):
        raise NotImplementedError

    def _foreground(self, prepared, markers: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RandomWalkerSegmenter(_MarkerSegmenter):
    """Random-walker segmentation (Grady 2006) seeded by prompts.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3) RGB; one bool (H, W)
    mask per prompt set, True where a random walk from the pixel most likely first reaches a
    foreground marker (markers as in ``seed_markers``). Edge weights use all three colour channels;
    ``beta`` is the diffusion penalty of ``skimage.segmentation.random_walker`` (larger = walks stop
    harder at colour edges). A prompt set marking no foreground (no positive point, box or positive dense
    pixel) gives an all-False mask. On a constant image (no edges to follow, e.g. a no-data tile) each
    pixel takes its nearest marker."""

    def __init__(
        self,
        *,
        seed_radius: Annotated[int, Field(ge=0)] = 2,
        border: Annotated[int, Field(ge=1)] = 2,
        beta: Annotated[float, Field(gt=0)] = 130.0,
    ):
        self.seed_radius = seed_radius
        self.border = border
        self.beta = beta

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        from skimage.util import img_as_float

        return img_as_float(image)

    def _foreground(self, prepared: np.ndarray, markers: np.ndarray) -> np.ndarray:
        if np.ptp(prepared) == 0:
            # random_walker scales weights by 1 / std(image), which is undefined here.
            return _nearest_marker(markers) == FOREGROUND
        from skimage.segmentation import random_walker

        with warnings.catch_warnings():
            # The iterative solver overshoots [0, 1] by about its tolerance; only the argmax is used.
            warnings.filterwarnings("ignore", message="The probability range is outside", category=UserWarning)
            labels = random_walker(prepared, markers, beta=self.beta, mode="cg_j", channel_axis=-1)
        return labels == FOREGROUND


def _nearest_marker(markers: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    _, (rows, cols) = ndimage.distance_transform_edt(markers == UNLABELLED, return_indices=True)
    return markers[rows, cols]


class WatershedSegmenter(_MarkerSegmenter):
    """Marker-controlled watershed on the colour gradient, seeded by prompts.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3) RGB; one bool (H, W)
    mask per prompt set, True on the basin flooded from the foreground markers (markers as in
    ``seed_markers``). The relief is the root-sum-square of the Sobel gradient magnitudes of the R, G
    and B channels, so an edge between colours of equal brightness still counts; it is computed once
    per call. ``compactness`` > 0 gives the more regular compact watershed. A prompt set marking no
    foreground (no positive point, box or positive dense pixel) gives an all-False mask."""

    def __init__(
        self,
        *,
        seed_radius: Annotated[int, Field(ge=0)] = 2,
        border: Annotated[int, Field(ge=1)] = 2,
        compactness: Annotated[float, Field(ge=0)] = 0.0,
    ):
        self.seed_radius = seed_radius
        self.border = border
        self.compactness = compactness

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        from skimage.filters import sobel
        from skimage.util import img_as_float

        channels = img_as_float(image)
        return np.sqrt(sum(sobel(channels[..., c]) ** 2 for c in range(channels.shape[2])))

    def _foreground(self, prepared: np.ndarray, markers: np.ndarray) -> np.ndarray:
        from skimage.segmentation import watershed

        return watershed(prepared, markers, compactness=self.compactness) == FOREGROUND


class GrabCutSegmenter(_MarkerSegmenter):
    """GrabCut (Rother et al. 2004, OpenCV's ``cv2.grabCut``) initialised from prompts.

    ``segment(image, prompts) -> list[np.ndarray]``: ``image`` uint8 (H, W, 3) RGB; one bool (H, W) mask
    per prompt set, True where GrabCut ends with (probable) foreground. The initial mask is probable
    background everywhere, definite foreground on the foreground markers and definite background on the
    background markers of ``seed_markers`` (discs of ``seed_radius`` around the points; without negative
    points, the border ring ``border`` pixels wide). ``iterations``: GrabCut's colour-model / graph-cut
    rounds. OpenCV's random generator is reseeded before each call, so results are deterministic. A
    prompt set marking no foreground (no positive point, box or positive dense pixel) gives an all-False
    mask."""

    def __init__(
        self,
        *,
        seed_radius: Annotated[int, Field(ge=0)] = 3,
        border: Annotated[int, Field(ge=1)] = 2,
        iterations: Annotated[int, Field(ge=1)] = 5,
    ):
        self.seed_radius = seed_radius
        self.border = border
        self.iterations = iterations

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image, dtype=np.uint8)

    def _foreground(self, prepared: np.ndarray, markers: np.ndarray) -> np.ndarray:
        import cv2

        mask = np.full(markers.shape, cv2.GC_PR_BGD, dtype=np.uint8)
        mask[markers == BACKGROUND] = cv2.GC_BGD
        mask[markers == FOREGROUND] = cv2.GC_FGD
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # the colour models start from k-means with OpenCV's global generator
        cv2.grabCut(prepared, mask, None, background_model, foreground_model, self.iterations,
                    cv2.GC_INIT_WITH_MASK)
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


class CamThreshold:
    """The binarised saliency map, ignoring the image and the prompts: what any segmenter must beat.

    Declares ``uses_saliency = True``, an optional addition to the segmenter contract: the runner then
    calls ``segment(image, prompts, *, saliency)`` with ``saliency`` a list of float32 (H, W) maps in
    [0, 1], one per prompt set (the map its prompts were seeded from). Returns one bool (H, W) mask per
    prompt set: the map min-max scaled (as ``xaibench.pipeline.metrics.normalise``; a constant map gives no
    pixel) ``>= threshold``, so it equals the explanation's own fixed-threshold binarisation."""

    uses_saliency = True
    prompt_kinds = ("points", "boxes", "dense")  # it reads none of them

    def __init__(self, *, threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5):
        self.threshold = threshold

    def segment(self, image: np.ndarray, prompts: Sequence[Prompts], *, saliency=None) -> list[np.ndarray]:
        image = _check_image(image)
        prompts = list(prompts)
        if saliency is None:
            raise ValueError("cam-threshold segments the saliency map itself: pass saliency=[map per prompt set]")
        saliency = list(saliency)
        if len(saliency) != len(prompts):
            raise ValueError(f"cam-threshold got {len(saliency)} saliency maps for {len(prompts)} prompt sets")
        masks = []
        for saliency_map in saliency:
            saliency_map = np.asarray(saliency_map, dtype=np.float32)
            if saliency_map.shape != image.shape[:2]:
                raise ValueError(
                    f"saliency map shape {saliency_map.shape} differs from the image's {image.shape[:2]}"
                )
            masks.append(binarise(saliency_map[None], self.threshold)[0])
        return masks


@hookimpl
def register_segmenters(register):
    register("random-walker", RandomWalkerSegmenter)
    register("watershed", WatershedSegmenter)
    register("grabcut", GrabCutSegmenter)
    register("cam-threshold", CamThreshold)
