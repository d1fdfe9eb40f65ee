"""Annotation noise: degrade an exact relevance mask the way a quick human annotator would.

A helper of the ``synthetic`` dataset (it registers nothing). ``AnnotationNoise`` holds the settings, each
defaulting to "no noise"; ``degrade`` applies them to one mask; ``choose_degraded`` picks which of a split's
annotations are degraded at all. All lengths are in pixels.

The modes, applied in this order when several are set (0 switches a mode off):

- ``missing``: each connected part (8-connectivity) but the largest is left out with this probability, as
  when an annotator overlooks an object. The largest part always stays: an annotator who notices anything
  notices the most conspicuous part, and a multiclass region split by the road must not shrink to a sliver.
- ``erode``: the mask shrinks by this radius (erosion with a disc), as with outlines drawn inside the edge.
  A part that would vanish completely is kept as it was. The tile's edge does not count as an outline, so
  an object cut by the edge still reaches it.
- ``dilate``: the mask grows by this radius (dilation with a disc), as with outlines drawn generously.
- ``coarse``: each part is replaced by a filled polygon along its outer outline, simplified by
  Douglas-Peucker with this tolerance, as with a few clicks of a polygon tool. The corners lie on the
  outline, so along a convex stretch the edges cut inside it by up to the tolerance and the part shrinks.
  Holes inside a part are filled, since annotators draw outer outlines. A part too small to give a polygon
  is kept as it was.
- ``shift``: the whole annotation moves by a vector of length drawn uniformly in [0, shift] in a uniformly
  drawn direction, rounded to whole pixels, as with a misregistered annotation layer. Pixels moved off the
  tile are lost; if none would remain, the annotation stays where it was.

A non-empty mask therefore always stays non-empty. ``missing`` and ``shift`` draw from their own child
streams of the given generator, so for one generator the same parts go missing and the same direction is
taken whatever the other settings are, and a larger ``missing`` or ``shift`` only drops more or moves further:
settings are compared on paired draws.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from xaibench.kit.registry import closest

# Modes in the order they are applied.
MODES = ("missing", "erode", "dilate", "coarse", "shift")

Share = Annotated[float, Field(ge=0.0, le=1.0)]
Pixels = Annotated[float, Field(ge=0.0)]

EIGHT_CONNECTED = np.ones((3, 3), bool)


class AnnotationNoise(BaseModel):
    """How training annotations are degraded. Every default means "no noise"; see the module docstring.

    ``missing``: probability in [0, 1] that each connected part but the largest is left out. ``erode``,
    ``dilate``: radius in pixels. ``coarse``: Douglas-Peucker tolerance in pixels. ``shift``: largest offset
    in pixels. ``fraction``: share in [0, 1] of a split's annotations degraded at all; the rest stay exact."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # as every grid number

    missing: Share = 0.0
    erode: Pixels = 0.0
    dilate: Pixels = 0.0
    coarse: Pixels = 0.0
    shift: Pixels = 0.0
    fraction: Share = 1.0

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data):
        # pydantic's own message for an unknown key would be reported against the dataset's parameters.
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            hint = closest(str(unknown[0]), cls.model_fields)
            raise PydanticCustomError(
                "unknown_setting", f"unknown setting {', '.join(map(repr, unknown))}"
                f"{f' (did you mean {hint!r}?)' if hint else ''}; settings: {', '.join(cls.model_fields)}")
        return data

    @property
    def active(self) -> bool:
        """Whether any annotation changes at all: some mode is set and ``fraction`` is above 0."""
        return self.fraction > 0 and any(getattr(self, mode) > 0 for mode in MODES)


def choose_degraded(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which of ``count`` annotations to degrade: bool (count,), exactly ``round(fraction * count)`` True.

    The choice is a random ranking cut at the share, so for one generator a smaller ``fraction`` picks a
    subset of what a larger one picks."""
    ranks = np.empty(count, np.int64)
    ranks[rng.permutation(count)] = np.arange(count)
    return ranks < math.floor(fraction * count + 0.5)


def degrade(mask: np.ndarray, noise: AnnotationNoise, rng: np.random.Generator) -> np.ndarray:
    """A degraded copy of ``mask``, bool (H, W) -> bool (H, W); ``mask`` is left unchanged.

    Deterministic for a given generator state (one made by ``np.random.default_rng``, whose children it
    spawns). A non-empty mask gives a non-empty result. ``noise.fraction`` is not used here: the caller
    decides with ``choose_degraded`` which masks to degrade."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool).copy()
    missing_rng, shift_rng = rng.spawn(2)
    if not mask.any():
        return mask
    if noise.missing > 0:
        mask = _drop_parts(mask, noise.missing, missing_rng)
    if noise.erode > 0:
        # Distance to the nearest background pixel; the outside of the tile is not background.
        parts, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
        eroded = ndimage.distance_transform_edt(mask) > noise.erode
        survivors = np.bincount(parts[eroded], minlength=parts.max() + 1) > 0
        survivors[0] = True  # the background label: never restored
        mask = eroded | ~survivors[parts]
    if noise.dilate > 0:
        mask = ndimage.distance_transform_edt(~mask) <= noise.dilate
    if noise.coarse > 0:
        mask = _polygons(mask, noise.coarse)
    if noise.shift > 0:
        mask = _shift(mask, noise.shift, shift_rng)
    return mask


def _drop_parts(mask: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    parts, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
    dropped = rng.random(count) < probability
    dropped[np.argmax(sizes)] = False
    return mask & ~np.concatenate([[False], dropped])[parts]


def _polygons(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Each part filled inside its outer outline simplified by Douglas-Peucker with ``tolerance`` pixels."""
    from scipy import ndimage
    from skimage.draw import polygon
    from skimage.measure import approximate_polygon, find_contours

    parts, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    out = np.zeros_like(mask)
    for label, box in enumerate(ndimage.find_objects(parts), start=1):
        part = parts[box] == label
        # A one-pixel frame closes every contour; "high" joins diagonal neighbours, like the labelling.
        contours = find_contours(np.pad(part, 1).astype(np.float32), 0.5, fully_connected="high")
        outline = max(contours, key=_enclosed_area)
        corners = approximate_polygon(outline, tolerance) - 1 + (box[0].start, box[1].start)
        rows, cols = polygon(corners[:, 0], corners[:, 1], shape=mask.shape)
        if len(rows):
            out[rows, cols] = True
        else:
            out[box] |= part
    return out


def _enclosed_area(contour: np.ndarray) -> float:
    rows, cols = contour[:, 0], contour[:, 1]
    return abs(float(np.dot(rows, np.roll(cols, 1)) - np.dot(cols, np.roll(rows, 1)))) / 2


def _shift(mask: np.ndarray, max_offset: float, rng: np.random.Generator) -> np.ndarray:
    length, angle = rng.random() * max_offset, rng.random() * 2 * np.pi
    d_row, d_col = round(length * math.sin(angle)), round(length * math.cos(angle))
    height, width = mask.shape
    if abs(d_row) >= height or abs(d_col) >= width:
        return mask
    out = np.zeros_like(mask)
    out[max(d_row, 0):height + min(d_row, 0), max(d_col, 0):width + min(d_col, 0)] = (
        mask[max(-d_row, 0):height - max(d_row, 0), max(-d_col, 0):width - max(d_col, 0)]
    )
    return out if out.any() else mask
