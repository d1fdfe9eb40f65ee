"""Seeders: saliency map → point prompts.

``top-k`` places foreground points on the highest peaks of a saliency map, the way the paper turns
Grad-CAM maxima into clicks for Segment Anything.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.contracts import Prompts
from xaibench.hookspecs import hookimpl

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


@hookimpl
def register_seeders(register):
    register("top-k", TopK)
