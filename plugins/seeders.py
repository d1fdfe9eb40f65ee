"""Seeders: saliency map → prompts (points, boxes, a dense mask prompt).

``top-k`` places foreground points on the highest peaks of a saliency map, the way the paper turns
Grad-CAM maxima into clicks for Segment Anything. ``components`` places one point on each salient region
(connected component of the thresholded map) instead of each peak, and ``pos-neg`` adds background clicks
on the least salient pixels to ``top-k``'s foreground ones. ``boxes`` gives one box per salient region
(with ``points: true`` also each region's peak as a point), and ``dense`` the map itself as a mask prompt
in logits, the form Segment Anything's ``mask_input`` takes.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.kit.contracts import Prompts
from xaibench.kit.hookspecs import hookimpl

# Saliency values are compared at this resolution, so that a plateau stays one plateau although
# bilinear upsampling of equal neighbours is not bit-exact in float32.
VALUE_RESOLUTION = 1e-6


class TopK:
    """The ``k`` highest peaks of a saliency map as foreground points, picked greedily.

    ``__call__(saliency) -> Prompts``: ``saliency`` float (H, W), nominally in [0, 1]; NaN and inf are
    never picked. A peak is a regional maximum: an 8-connected plateau of equal values (at
    ``VALUE_RESOLUTION``) with no higher neighbour, placed at the plateau pixel nearest the plateau's
    centroid. So a map upsampled from a coarse grid (nearest or bilinear) gives one point per local
    top, not a cluster of points on the flanks of the highest one; a constant map is one plateau.
    Peaks are taken highest first (ties: the plateau with the lowest flat index first); a peak closer
    than ``min_distance`` pixels (Euclidean) to a point already taken is skipped, as if a disc of that
    radius had been suppressed around each pick. Stops after ``k`` points, or early when the next
    peak is ``<= min_value`` or no peak remains.

    Returns ``Prompts`` with float32 (N, 2) points at integer pixel positions (x=column, y=row),
    0 <= N <= k, highest peak first, and int64 labels all 1."""

    def __init__(
        self,
        *,
        k: Annotated[int, Field(ge=1)] = 3,
        min_distance: Annotated[int, Field(ge=0)] = 8,
        min_value: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
    ):
        self.k = k
        self.min_distance = min_distance
        self.min_value = min_value

    def __call__(self, saliency: np.ndarray) -> Prompts:
        saliency = np.asarray(saliency)
        if saliency.ndim != 2:
            raise ValueError(f"saliency must have shape (H, W), got {saliency.shape}")
        picked: list[tuple[int, int]] = []
        for value, row, col in zip(*regional_maxima(saliency)):
            if len(picked) == self.k or not value > self.min_value:
                break
            if all((row - r) ** 2 + (col - c) ** 2 >= self.min_distance**2 for r, c in picked):
                picked.append((int(row), int(col)))
        return Prompts(
            points=np.asarray([(col, row) for row, col in picked], dtype=np.float32).reshape(-1, 2),
            labels=np.ones(len(picked), dtype=np.int64),
        )


def regional_maxima(saliency: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regional maxima of a 2-D map, highest first: ``(values, rows, cols)``.

    One entry per 8-connected plateau with no higher neighbour (values compared at
    ``VALUE_RESOLUTION``): its highest value and the plateau pixel nearest the plateau's centroid,
    which lies inside the plateau even when it is not convex (ties: lowest flat index). Equal values
    are ordered by the plateau's lowest flat index. Non-finite values count as -inf."""
    from scipy import ndimage
    from skimage.morphology import local_maxima

    values = np.where(np.isfinite(saliency), saliency, -np.inf).astype(np.float64)
    levels = np.round(values / VALUE_RESOLUTION)
    tops = local_maxima(levels, connectivity=2, allow_borders=True)
    if not tops.any():  # skimage finds no maximum on a constant map; here it is one plateau
        tops = levels == levels.max()
    # Labels follow raster order, so label order is the order of each plateau's lowest flat index.
    labels, count = ndimage.label(tops, structure=np.ones((3, 3), dtype=bool))
    rows, cols = np.nonzero(tops)
    plateau = labels[rows, cols] - 1
    size = np.bincount(plateau, minlength=count)
    centre_row = np.bincount(plateau, weights=rows, minlength=count) / size
    centre_col = np.bincount(plateau, weights=cols, minlength=count) / size
    off_centre = (rows - centre_row[plateau]) ** 2 + (cols - centre_col[plateau]) ** 2
    by_plateau = np.lexsort((off_centre, plateau))  # stable: equal distances keep flat order
    starts = np.r_[0, np.flatnonzero(np.diff(plateau[by_plateau])) + 1]
    central = by_plateau[starts]
    peak_values = np.full(count, -np.inf)
    np.maximum.at(peak_values, plateau, values[rows, cols])
    order = np.lexsort((np.arange(count), -peak_values))
    return peak_values[order], rows[central][order], cols[central][order]


def _unit_map(saliency: np.ndarray) -> np.ndarray:
    """float64 (H, W): min-max scaled to [0, 1] (constant → zeros), non-finite values counted as the minimum."""
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.ndim != 2:
        raise ValueError(f"saliency must have shape (H, W), got {saliency.shape}")
    finite = np.isfinite(saliency)
    if not finite.any():
        return np.zeros(saliency.shape)
    values = np.where(finite, saliency, saliency[finite].min())
    low, span = values.min(), np.ptp(values)
    return (values - low) / span if span > 0 else np.zeros(saliency.shape)


def _prompts(points: list[tuple[int, int]], labels: list[int]) -> Prompts:
    """Prompts from (row, col) pixel positions."""
    return Prompts(
        points=np.asarray([(col, row) for row, col in points], dtype=np.float32).reshape(-1, 2),
        labels=np.asarray(labels, dtype=np.int64),
    )


class Components:
    """One foreground point per salient region: the connected components of the thresholded map.

    ``__call__(saliency) -> Prompts``: ``saliency`` float (H, W), min-max scaled per map (NaN and inf
    count as its minimum; a constant map becomes zeros). Regions are the 8-connected components of
    ``scaled >= threshold``. Each gives the pixel nearest its saliency-weighted centre (its plain centroid
    when all its saliency is 0); if that pixel is outside the region (a crescent, a ring), the region's
    pixel nearest the centre (ties: lowest flat index). Regions are taken by saliency mass, the sum of
    their scaled values, largest first (ties: raster order of their first pixel), at most ``max_points``.

    Returns ``Prompts`` with float32 (N, 2) points at integer pixel positions (x=column, y=row),
    0 <= N <= max_points, and int64 labels all 1."""

    def __init__(
        self,
        *,
        threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
        max_points: Annotated[int, Field(ge=1)] = 5,
    ):
        self.threshold = threshold
        self.max_points = max_points

    def __call__(self, saliency: np.ndarray) -> Prompts:
        from scipy import ndimage

        scaled = _unit_map(saliency)
        labels, count = ndimage.label(scaled >= self.threshold, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            return _prompts([], [])
        rows, cols = np.nonzero(labels)
        region = labels[rows, cols] - 1
        weight = scaled[rows, cols]
        mass = np.bincount(region, weights=weight, minlength=count)
        size = np.bincount(region, minlength=count)
        weighted = mass > 0
        norm = np.where(weighted, mass, size)
        spread = np.where(weighted[region], weight, 1.0)
        centre_row = np.bincount(region, weights=spread * rows, minlength=count) / norm
        centre_col = np.bincount(region, weights=spread * cols, minlength=count) / norm
        picked = []
        for r in np.lexsort((np.arange(count), -mass))[: self.max_points]:
            row = min(max(int(np.floor(centre_row[r] + 0.5)), 0), scaled.shape[0] - 1)
            col = min(max(int(np.floor(centre_col[r] + 0.5)), 0), scaled.shape[1] - 1)
            if labels[row, col] != r + 1:
                inside = np.flatnonzero(region == r)  # raster order, so argmin keeps the lowest flat index
                gaps = (rows[inside] - centre_row[r]) ** 2 + (cols[inside] - centre_col[r]) ** 2
                nearest = inside[int(np.argmin(gaps))]
                row, col = int(rows[nearest]), int(cols[nearest])
            picked.append((row, col))
        return _prompts(picked, [1] * len(picked))


def _regions(saliency: np.ndarray, threshold: float):
    """The 8-connected components of the min-max scaled map ``>= threshold``: (scaled map, label image,
    count, pixel count per region)."""
    from scipy import ndimage

    scaled = _unit_map(saliency)
    labels, count = ndimage.label(scaled >= threshold, structure=np.ones((3, 3), dtype=bool))
    return scaled, labels, count, np.bincount(labels.ravel(), minlength=count + 1)[1:]


class Boxes:
    """One box per salient region: the bounding boxes of the connected components of the thresholded map.

    ``__call__(saliency) -> Prompts``: ``saliency`` float (H, W), min-max scaled per map (a constant map
    becomes zeros, and gives no region unless ``threshold`` is 0: then the whole image is one). Regions are the 8-connected components of ``scaled >= threshold``,
    taken largest first (pixel count; ties: raster order of their first pixel), at most ``k``. Each gives
    the box (x0, y0, x1, y1) round its pixels, pixel edges included (a one-pixel region at column c, row r
    is (c, r, c + 1, r + 1)). With ``points``, also each region's most salient pixel (ties: the first in
    raster order) as a foreground point: boxes and points together, for segmenters that take both.

    Returns ``Prompts`` with float32 (M, 4) boxes, 0 <= M <= k, and points as ``points`` says (else none)."""

    def __init__(self, *, threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
                 k: Annotated[int, Field(ge=1)] = 3, points: bool = False):
        self.threshold = threshold
        self.k = k
        self.points = points

    @property
    def prompt_kinds(self) -> tuple[str, ...]:
        return ("points", "boxes") if self.points else ("boxes",)

    def __call__(self, saliency: np.ndarray) -> Prompts:
        from scipy import ndimage

        scaled, labels, count, sizes = _regions(saliency, self.threshold)
        order = np.lexsort((np.arange(count), -sizes))[: self.k]
        slices = ndimage.find_objects(labels)
        boxes = [(slices[r][1].start, slices[r][0].start, slices[r][1].stop, slices[r][0].stop) for r in order]
        peaks = []
        if self.points:
            for r in order:
                inside = np.where(labels == r + 1, scaled, -1.0)
                peaks.append(np.unravel_index(int(np.argmax(inside)), inside.shape))
        prompts = _prompts(peaks, [1] * len(peaks))
        return Prompts(prompts.points, prompts.labels, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


class Dense:
    """The saliency map itself as a dense mask prompt: ``gain * (scaled - threshold)``, logits at image
    size (positive where the min-max scaled map is above ``threshold``, 0 at it: undecided), the scale of Segment Anything's
    own low-resolution mask logits, which its ``mask_input`` takes (the segmenter resizes them to its own
    frame). A constant map gives ``-gain * threshold`` everywhere: nothing is marked foreground.

    Returns ``Prompts`` with no points and ``dense`` float32 (H, W)."""

    prompt_kinds = ("dense",)

    def __init__(self, *, threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
                 gain: Annotated[float, Field(gt=0.0)] = 20.0):
        self.threshold = threshold
        self.gain = gain

    def __call__(self, saliency: np.ndarray) -> Prompts:
        logits = (self.gain * (_unit_map(saliency) - self.threshold)).astype(np.float32)
        return Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), dense=logits)


class PosNeg:
    """``top-k``'s foreground points plus background points on the least salient pixels.

    ``__call__(saliency) -> Prompts``: positives exactly as ``TopK(k, min_distance, min_value)``. Then
    up to ``negatives`` background points, picked greedily from the pixels of lowest saliency (min-max
    scaled per map, compared at ``VALUE_RESOLUTION``; NaN and inf count as the minimum) and never above
    ``max_negative_value``; among equally low pixels, the one farthest from the positives first (ties:
    lowest flat index), so a flat zero background gives clicks away from the object, not along the top
    row. A pixel closer than ``min_distance`` pixels (Euclidean) to any point already taken, positive or
    negative, is skipped.

    Returns ``Prompts`` with float32 (N, 2) points at integer pixel positions (x=column, y=row): the
    positives (label 1, highest peak first), then the negatives (label 0, lowest first)."""

    def __init__(
        self,
        *,
        k: Annotated[int, Field(ge=1)] = 3,
        negatives: Annotated[int, Field(ge=0)] = 3,
        min_distance: Annotated[int, Field(ge=0)] = 8,
        min_value: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0,
        max_negative_value: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2,
    ):
        self.k = k
        self.negatives = negatives
        self.min_distance = min_distance
        self.min_value = min_value
        self.max_negative_value = max_negative_value

    def __call__(self, saliency: np.ndarray) -> Prompts:
        positives = TopK(k=self.k, min_distance=self.min_distance, min_value=self.min_value)(saliency)
        scaled = _unit_map(saliency)
        height, width = scaled.shape
        rows, cols = np.mgrid[:height, :width]
        rows, cols = rows.ravel(), cols.ravel()
        if len(positives.points):
            px, py = positives.points[:, 0], positives.points[:, 1]
            distance = np.min((rows[:, None] - py) ** 2 + (cols[:, None] - px) ** 2, axis=1)
        else:
            distance = np.zeros(rows.size)
        levels = np.round(scaled.ravel() / VALUE_RESOLUTION)
        order = np.lexsort((np.arange(rows.size), -distance, levels))
        order = order[scaled.ravel()[order] <= self.max_negative_value]
        free = np.ones(rows.size, dtype=bool)

        def suppress(row, col):
            free[(rows - row) ** 2 + (cols - col) ** 2 < self.min_distance**2] = False
            free[row * width + col] = False

        for x, y in positives.points:
            suppress(int(y), int(x))
        picked = []
        while len(picked) < self.negatives:
            candidates = order[free[order]]
            if not len(candidates):
                break
            row, col = int(rows[candidates[0]]), int(cols[candidates[0]])
            picked.append((row, col))
            suppress(row, col)
        negatives = _prompts(picked, [0] * len(picked))
        return Prompts(
            points=np.concatenate([positives.points, negatives.points]),
            labels=np.concatenate([positives.labels, negatives.labels]),
        )


@hookimpl
def register_seeders(register):
    register("top-k", TopK)
    register("components", Components)
    register("pos-neg", PosNeg)
    register("boxes", Boxes)
    register("dense", Dense)
