"""Acceptance rules of the annotation loop: when an explanation-prompted segmentation replaces an image's
training annotation.

``always`` takes every non-empty segmentation; it shows what the loop does unfiltered. ``agreement`` takes
a segmentation only where the segmenter is confident, the explanation agrees with it, and it stays close
to the annotation it replaces, so one bad prompt cannot throw away a usable human annotation.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.kit.hookspecs import hookimpl
from xaibench.pipeline.metrics import normalise


def _checked(annotation, proposal) -> tuple[np.ndarray, np.ndarray]:
    annotation, proposal = np.asarray(annotation), np.asarray(proposal)
    if annotation.dtype != bool or proposal.dtype != bool or annotation.shape != proposal.shape or annotation.ndim != 2:
        raise ValueError(f"annotation and proposal must be bool masks of one shape (H, W), got "
                         f"{annotation.dtype} {annotation.shape} and {proposal.dtype} {proposal.shape}")
    return annotation, proposal


class Always:
    """Accepts every proposal with at least ``min_pixels`` foreground pixels; returns it unchanged."""

    def __init__(self, *, min_pixels: Annotated[int, Field(ge=1)] = 1):
        self.min_pixels = min_pixels

    def __call__(self, annotation, proposal, *, saliency, score):
        annotation, proposal = _checked(annotation, proposal)
        return proposal if int(proposal.sum()) >= self.min_pixels else None


class Agreement:
    """Accepts a proposal (returned unchanged) when all of these hold, else keeps the annotation (None):

    - the segmenter's confidence is at least ``min_score`` (a NaN confidence, from segmenters that give
      none, passes);
    - the explanation agrees with it: the mean of the saliency map, min-max scaled per image as
      ``xaibench.pipeline.metrics.normalise``, over the proposal's pixels is at least ``min_saliency``;
    - it overlaps the current annotation: IoU at least ``min_overlap`` (an empty annotation counts as
      overlapping any proposal, so images the annotator missed can be filled in);
    - its area is within a factor ``max_growth`` of the annotation's, both ways (unchecked for an empty
      annotation);
    - it has at least ``min_pixels`` pixels."""

    def __init__(
        self,
        *,
        min_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
        min_saliency: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
        min_overlap: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
        max_growth: Annotated[float, Field(ge=1.0)] = 2.0,
        min_pixels: Annotated[int, Field(ge=1)] = 1,
    ):
        self.min_score = min_score
        self.min_saliency = min_saliency
        self.min_overlap = min_overlap
        self.max_growth = max_growth
        self.min_pixels = min_pixels

    def __call__(self, annotation, proposal, *, saliency, score):
        annotation, proposal = _checked(annotation, proposal)
        area, annotated = int(proposal.sum()), int(annotation.sum())
        if area < self.min_pixels or (np.isfinite(score) and score < self.min_score):
            return None
        scaled = normalise(np.asarray(saliency, dtype=np.float32)[None])[0]
        if float(scaled[proposal].mean()) < self.min_saliency:
            return None
        if annotated:
            overlap = int((proposal & annotation).sum()) / int((proposal | annotation).sum())
            if overlap < self.min_overlap or not 1 / self.max_growth <= area / annotated <= self.max_growth:
                return None
        return proposal


@hookimpl
def register_acceptors(register):
    register("always", Always)
    register("agreement", Agreement)
