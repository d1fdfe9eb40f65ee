"""The ``centroid`` seeder: one foreground point at the centre of mass of the salient region."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.kit.contracts import Prompts


class CentroidSeeder:
    """One foreground point at the saliency-weighted centre of the salient region, and optionally one
    background point at the least salient pixel.

    ``__call__(saliency) -> Prompts``: ``saliency`` float (H, W) in [0, 1]. The map is min-max scaled (a
    constant map gives no points; NaN and inf count as the minimum); the salient region is
    ``scaled >= threshold``. The point is the region's pixel nearest to its centre of mass weighted by
    ``scaled`` (ties: lowest flat index): the centre itself, rounded, unless the centre falls outside the
    region (a ring, two blobs). With
    ``background=True`` a background point (label 0) is added at the lowest-scaled pixel farthest from the
    foreground point (ties: lowest flat index).

    Returns ``Prompts``: float32 (N, 2) points (x=column, y=row) at integer positions, N in {0, 1, 2},
    the foreground point first; int64 labels."""

    def __init__(
        self,
        *,
        threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5,
        background: bool = False,
    ):
        self.threshold = threshold
        self.background = background

    def __call__(self, saliency: np.ndarray) -> Prompts:
        saliency = np.asarray(saliency, dtype=np.float64)
        if saliency.ndim != 2:
            raise ValueError(f"saliency must have shape (H, W), got {saliency.shape}")
        finite = np.isfinite(saliency)
        span = np.ptp(saliency[finite]) if finite.any() else 0.0
        if span == 0:
            return Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int64))
        low = saliency[finite].min()
        scaled = np.where(finite, (saliency - low) / span, 0.0)
        rows, cols = np.nonzero(scaled >= self.threshold)
        weights = scaled[rows, cols]
        centre = np.array([np.average(rows, weights=weights), np.average(cols, weights=weights)])
        distance = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
        nearest = int(np.argmin(distance))
        row, col = int(rows[nearest]), int(cols[nearest])
        points, labels = [(col, row)], [1]
        if self.background:
            all_rows, all_cols = np.nonzero(scaled == scaled.min())
            far = int(np.argmax((all_rows - row) ** 2 + (all_cols - col) ** 2))
            points.append((int(all_cols[far]), int(all_rows[far])))
            labels.append(0)
        return Prompts(np.asarray(points, np.float32), np.asarray(labels, np.int64))
