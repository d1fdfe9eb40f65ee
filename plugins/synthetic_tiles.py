"""Drawing the ``synthetic`` dataset's tiles: textured ground, target crowns among distractor shrubs
(``binary_tile``), land-cover regions (``land_cover_tile``) and the pale road that carries the spurious
cue. See ``xaibench_plugins.synthetic`` for what the tiles mean; every function here takes its own random
generator, so a tile depends only on its stream and its arguments. Any change here that changes a tile
must bump ``xaibench_plugins.synthetic.GENERATOR_VERSION``, which is part of the dataset's fingerprint.

``binary_tile(rng, size, label, cue, num_classes, nir_rng=None, *, hide_in_rgb=False)`` and
``land_cover_tile(rng, size, label, cue, num_classes, nir_rng=None)`` return ``(image uint8 (size, size, 3),
mask bool (size, size) or None)``: red, green, blue. Given ``nir_rng``, the image is (size, size, 4): the
fourth band is near-infrared, derived from what ``rng`` drew plus draws from ``nir_rng`` alone, so the first
three bands are exactly the three-band image. ``hide_in_rgb`` draws a binary tile's crowns, and their
shadows, in the near-infrared band only (see ``binary_tile``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

LAND_COVER_CLASSES = ["artificial", "bare", "water", "cropland", "grassland", "scrub", "forest"]

# Lengths below are in pixels of a 96-pixel tile and scale with image_size. Colours are RGB in 0..255.
REFERENCE_SIZE = 96
GROUND = np.array(
    [[112, 132, 70], [150, 146, 92], [128, 104, 76], [92, 106, 62], [136, 128, 84]], np.float32
)  # grass, dry grass, soil, scrub, stubble
CROWN = np.array([34, 70, 48], np.float32)
SHRUBS = np.array([[116, 106, 58], [108, 86, 56], [96, 100, 50]], np.float32)  # olive, brown, khaki
ROAD = np.array([214, 208, 196], np.float32)
# Near-infrared levels, in 0..255 like the colours: healthy vegetation reflects it strongly, the crowns most;
# soil less; gravel, water and shadows little.
GROUND_NIR = np.array([140, 115, 80, 145, 105], np.float32)  # as GROUND
CROWN_NIR = 205.0
SHRUBS_NIR = np.array([165, 135, 150], np.float32)  # as SHRUBS
SAPLING_NIR = 170.0  # the small dark-green distractors
ROAD_NIR = 55.0
ROAD_HALF_WIDTH = 2.5
VERGE = 1.5


# -- shared drawing helpers --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _squared_frequencies(size: int) -> np.ndarray:
    return (np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@functools.lru_cache(maxsize=64)
def _low_pass(size: int, sigma: float) -> np.ndarray:
    return np.exp(-2 * np.pi**2 * sigma**2 * _squared_frequencies(size)).astype(np.float32)


def _noise(rng, size: int, sigmas) -> np.ndarray:
    """Periodic Gaussian-smoothed noise, one field per width in ``sigmas`` (pixels).

    float32 (len(sigmas), size, size), each field with zero mean and unit standard deviation."""
    import scipy.fft  # 4x faster than numpy.fft on float32

    # Uniform white noise is 6x cheaper to draw than normal, and the low-pass filter makes it Gaussian anyway.
    white = rng.random((len(sigmas), size, size), dtype=np.float32)
    # Filtering in the Fourier domain costs the same for any width, so wide fields are as cheap as fine ones.
    spectrum = scipy.fft.rfft2(white)
    spectrum *= np.stack([_low_pass(size, float(sigma)) for sigma in sigmas])
    spectrum[:, 0, 0] = 0  # zero mean
    fields = scipy.fft.irfft2(spectrum, s=(size, size))
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-6
    return fields


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _road_distance(rng, size: int, angle: float, max_offset: float) -> np.ndarray:
    """Distance (pixels) of every pixel from a straight line at ``angle`` (radians from the x axis)."""
    rows, cols = _coordinates(size)
    offset = rng.uniform(-max_offset, max_offset)
    centre = (size - 1) / 2
    return np.abs((cols - centre) * -math.sin(angle) + (rows - centre) * math.cos(angle) - offset)


def _draw_road(rng, image: np.ndarray, distance: np.ndarray, unit: float, grain: np.ndarray, nir=None) -> None:
    """The road into ``image`` (size, size, 3) and, unless None, ``nir`` (size, size), in place."""
    half_width = ROAD_HALF_WIDTH * unit
    verge = (distance > half_width) & (distance <= half_width + VERGE * unit)
    image[verge] *= 0.8
    surface = distance <= half_width
    wear = rng.uniform(0.97, 1.02)
    gravel = 1 + 0.025 * grain[surface]
    image[surface] = ROAD * wear * gravel[:, None]
    if nir is not None:
        nir[verge] *= 0.8
        nir[surface] = ROAD_NIR * wear * gravel


def _finish(rng, image: np.ndarray, nir=None) -> np.ndarray:
    """uint8 (size, size, 3) of ``image``, or (size, size, 4) with ``nir`` as the fourth band, lit alike."""
    illumination = rng.uniform(0.95, 1.05)
    image *= illumination
    if nir is not None:
        image = np.dstack([image, nir * illumination])
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


# -- binary: target crowns among distractor shrubs ---------------------------------------------------------


def binary_tile(rng, size: int, label: int, cue: int, num_classes: int, nir_rng=None, *, hide_in_rgb: bool = False):
    """A ground tile with shrubs, target crowns if ``label`` and the road if ``cue``; see the module docstring.

    With ``hide_in_rgb`` (needs ``nir_rng``) the crowns and their shadows are drawn in the near-infrared band
    only, and placed after the shrubs from ``nir_rng``: ``rng`` then draws exactly what it draws for an
    absent tile, so the red, green and blue bands are those of the absent tile of the same ``rng``."""
    if hide_in_rgb and nir_rng is None:
        raise ValueError("hide_in_rgb draws the crowns in the near-infrared band only: give nir_rng")
    unit = size / REFERENCE_SIZE
    low, mid, grain, clumps = _noise(rng, size, np.array([19.2, 6.0, 0.7, 1.2]) * unit)
    kinds, tone = rng.choice(len(GROUND), 2, replace=False), rng.uniform(0.92, 1.08)
    first, second = GROUND[kinds] * tone
    blend = _sigmoid(1.8 * low)[..., None]
    image = first * (1 - blend) + second * blend
    relief = 1 + 0.07 * mid + 0.05 * grain
    image *= relief[..., None]
    nir = leaf = None
    if nir_rng is not None:
        leaf, moisture = _noise(nir_rng, size, np.array([0.9, 12.0]) * unit)
        first_nir, second_nir = GROUND_NIR[kinds] * tone
        nir = (first_nir * (1 - blend[..., 0]) + second_nir * blend[..., 0]) * relief * (1 + 0.05 * moisture)

    road = _road_distance(rng, size, rng.uniform(0, np.pi), 0.25 * size) if cue else None
    road_zone = (ROAD_HALF_WIDTH + VERGE) * unit

    sun = rng.uniform(0, 2 * np.pi)
    towards_sun = np.array([np.sin(sun), np.cos(sun)])  # (row, col)
    taken: list[tuple[float, float, float]] = []
    crowns = []
    if label and not hide_in_rgb:
        for radius in rng.uniform(6, 12, rng.integers(1, 5)) * unit:
            crowns += _place(rng, size, radius, taken, road, road_zone)
    distractors = []  # (blob, colour, texture, near-infrared level)
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.65:
            radius, shrub = rng.uniform(3, 8) * unit, rng.integers(len(SHRUBS))
            colour, texture, level = SHRUBS[shrub], 0.12, SHRUBS_NIR[shrub]
        else:
            radius, colour, texture, level = rng.uniform(2, 4.5) * unit, CROWN * 1.15, 0.15, SAPLING_NIR
        distractors += [(blob, colour, texture, level) for blob in _place(rng, size, radius, taken, road, road_zone)]
    if label and hide_in_rgb:
        for radius in nir_rng.uniform(6, 12, nir_rng.integers(1, 5)) * unit:
            crowns += _place(nir_rng, size, radius, taken, road, road_zone)

    shown = [] if hide_in_rgb else crowns
    brightness, hue = rng.uniform(0.85, 1.15, (len(shown), 1)), rng.uniform(0.95, 1.05, (len(shown), 3))
    crown_colours = [None] * len(crowns) if hide_in_rgb else list(CROWN * brightness * hue)  # None: not in RGB
    crown_levels = CROWN_NIR * nir_rng.uniform(0.92, 1.08, len(crowns)) if nir is not None else [None] * len(crowns)
    everything = distractors + [(blob, colour, 0.22, level)
                                for blob, colour, level in zip(crowns, crown_colours, crown_levels)]
    for blob, colour, _, _ in everything:
        shift = -0.35 * blob.radius * towards_sun
        box, rel, _, _ = _footprint(blob, size, shift)
        darkness = np.clip((1.15 - rel) / 0.3, 0, 1)
        if colour is not None:
            image[box] *= (1 - 0.45 * darkness)[..., None]
        if nir is not None:
            nir[box] *= 1 - 0.55 * darkness
    mask = np.zeros((size, size), bool)
    for index, (blob, colour, texture, level) in enumerate(everything):
        box, rel, d_row, d_col = _footprint(blob, size)
        inside = rel <= 1
        sunlit = d_row * towards_sun[0] + d_col * towards_sun[1]
        if colour is not None:
            shade = 0.8 + 0.3 * (1 - np.minimum(rel, 1) ** 2) + 0.15 * sunlit
            pixels = colour * (shade * (1 + texture * clumps[box]))[..., None]
            image[box][inside] = pixels[inside]
        if nir is not None:  # flatter shading than in colour: leaves scatter near-infrared light
            shade = 0.92 + 0.12 * (1 - np.minimum(rel, 1) ** 2) + 0.06 * sunlit
            pixels = level * shade * (1 + 0.3 * texture * clumps[box] + 0.04 * leaf[box])
            nir[box][inside] = pixels[inside]
        if index >= len(distractors):
            mask[box] |= inside

    if road is not None:
        _draw_road(rng, image, road, unit, grain, nir)
        mask &= road > road_zone
    return _finish(rng, image, nir), (mask if label else None)


class _Blob:
    __slots__ = ("row", "col", "radius", "wobble", "phase")

    def __init__(self, rng, row: float, col: float, radius: float):
        self.row, self.col, self.radius = row, col, radius
        self.wobble = rng.uniform(0, 0.09, (3, 1, 1))  # amplitudes of the rim's 2nd..4th harmonics
        self.phase = rng.uniform(0, 2 * np.pi, (3, 1, 1))


def _place(rng, size: int, radius: float, taken: list, road, road_zone: float) -> list[_Blob]:
    """One blob of ``radius`` clear of the road (with its shadow) and of earlier blobs, or none if crowded."""
    candidates = rng.uniform(radius + 1, size - radius - 1, (128, 2))
    ok = np.ones(len(candidates), bool)
    if road is not None:
        cells = candidates.astype(int)
        ok &= road[cells[:, 0], cells[:, 1]] > road_zone + 1.5 * radius + 1
    for row, col, other in taken:
        ok &= np.hypot(candidates[:, 0] - row, candidates[:, 1] - col) > 1.1 * (radius + other) + 1
    if not ok.any():
        return []
    blob = _Blob(rng, *candidates[np.argmax(ok)], radius)
    taken.append((blob.row, blob.col, radius))
    return [blob]


def _footprint(blob: _Blob, size: int, shift=(0.0, 0.0)):
    """The blob's bounding box and, over it, radial position relative to the rim (< 1 inside) and offsets
    from the centre in radii."""
    row, col = blob.row + shift[0], blob.col + shift[1]
    reach = int(np.ceil(1.5 * blob.radius)) + 1  # the rim wobbles out to 1.27 radii, shadows fade to 1.46
    r0, r1 = max(0, int(row) - reach), min(size, int(row) + reach + 1)
    c0, c1 = max(0, int(col) - reach), min(size, int(col) + reach + 1)
    d_row = (np.arange(r0, r1, dtype=np.float32)[:, None] - row) / blob.radius
    d_col = (np.arange(c0, c1, dtype=np.float32)[None, :] - col) / blob.radius
    d_row, d_col = np.broadcast_arrays(d_row, d_col)
    angle = np.arctan2(d_row, d_col)
    harmonics = np.arange(2, 5)[:, None, None]
    rim = 1 + (blob.wobble * np.cos(harmonics * angle + blob.phase)).sum(axis=0)
    return (slice(r0, r1), slice(c0, c1)), np.hypot(d_row, d_col) / rim, d_row, d_col


# -- multiclass: land-cover regions ------------------------------------------------------------------------


def land_cover_tile(rng, size: int, label: int, cue: int, num_classes: int, nir_rng=None):
    """A patchwork of land-cover textures, the ``label``'s the largest region, crossed by the road whose
    direction is ``cue``'s; see the module docstring. ``nir_rng`` draws each texture's near-infrared level."""
    unit = size / REFERENCE_SIZE
    angle = (cue + rng.uniform(-0.3, 0.3)) * np.pi / num_classes
    road = _road_distance(rng, size, angle, 0.2 * size)
    road_zone = road <= (ROAD_HALF_WIDTH + VERGE) * unit

    others = rng.choice([c for c in range(num_classes) if c != label], min(3, num_classes - 1), replace=False)
    # The labelled region is the largest: each other class gets at most 85 % of its area.
    dominant = rng.uniform(max(0.35, 1 / (1 + 0.85 * len(others)) + 0.02), 0.8)
    shares = rng.dirichlet(np.full(len(others), 3.0)) * (1 - dominant)
    even, cap = (1 - dominant) / len(others), 0.85 * dominant
    if shares.max() > cap:
        shares = even + (shares - even) * (cap - even) / (shares.max() - even)

    # The tile's noise in one batch: region, patchwork and grain fields, then one per texture that has one.
    textures = [(cls, *TEXTURES[LAND_COVER_CLASSES[cls]]) for cls in (label, *others.tolist())]
    widths = [12.0, 9.6, 0.7] + [width for _, _, width in textures if width is not None]
    region_field, parts_field, grain, *texture_fields = _noise(rng, size, np.array(widths) * unit)

    rows, cols = _coordinates(size)
    centre = rng.uniform(0.3, 0.7, 2) * size
    score = region_field - 2.5 * np.hypot(rows - centre[0], cols - centre[1]) / size
    score[road_zone] = -np.inf
    region_pixels = round(dominant * size * size)
    mask = np.zeros(size * size, bool)
    mask[np.argpartition(-score.ravel(), region_pixels - 1)[:region_pixels]] = True
    mask = mask.reshape(size, size)

    cover = np.full(size * size, label)
    background = np.flatnonzero(~mask.ravel())
    background = background[np.argsort(parts_field.ravel()[background], kind="stable")]
    cuts = np.round(np.cumsum(shares)[:-1] / shares.sum() * len(background)).astype(int)
    for other, pixels in zip(others, np.split(background, cuts)):
        cover[pixels] = other
    cover = cover.reshape(size, size)

    image = np.empty((size, size, 3), np.float32)
    nir = None if nir_rng is None else np.empty((size, size), np.float32)
    fields = iter(texture_fields)
    for cls, texture, width in textures:
        field = next(fields) if width is not None else None
        colours, infrared = texture(rng, field, grain, size, unit)
        covered = cover == cls
        np.copyto(image, colours, where=covered[..., None])
        if nir is not None:
            np.copyto(nir, infrared * nir_rng.uniform(0.92, 1.08), where=covered)
    _draw_road(rng, image, road, unit, grain, nir)
    return _finish(rng, image, nir), mask


def _tone(rng, colour) -> np.ndarray:
    """``colour`` with a random brightness and a slight random hue shift."""
    jitter = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)
    return (np.asarray(colour) * jitter).astype(np.float32)


# Each texture: (colours float32 (size, size, 3), near-infrared float32 (size, size)), both 0..255, from the
# tile's pixel grain and its own smooth noise field, whose width in reference pixels is listed in TEXTURES
# (None: the texture ignores it). Only the colours draw from rng: the near-infrared band follows them.
def _artificial(rng, field, grain, size, unit):
    """Irregular blocks of roofs and paving separated by dark streets."""
    palette = np.array(
        [[110, 110, 112], [90, 92, 96], [128, 80, 68], [104, 98, 90], [116, 118, 120]], np.float32
    )  # kept darker than the road, so the road stays the only pale grey
    street_width = max(1, round(1.5 * unit))
    axes = []
    for _ in range(2):
        edges = rng.uniform(0, 14 * unit) + np.cumsum(rng.uniform(7, 16, size) * unit)
        cells = np.searchsorted(edges, np.arange(size))
        starts = np.flatnonzero(np.diff(cells)) + 1
        axes.append((cells, np.isin(np.arange(size), starts[:, None] + np.arange(street_width))))
    (row_cells, row_street), (col_cells, col_street) = axes
    kinds = rng.integers(len(palette), size=(row_cells.max() + 1, col_cells.max() + 1))
    image = palette[kinds][row_cells[:, None], col_cells[None, :]] * rng.uniform(0.92, 1.05)
    streets = row_street[:, None] | col_street[None, :]
    image[streets] = _tone(rng, [70, 70, 74])
    infrared = np.array([75, 65, 90, 80, 85], np.float32)[kinds][row_cells[:, None], col_cells[None, :]]
    infrared[streets] = 45
    relief = 1 + 0.03 * grain
    return image * relief[..., None], infrared * relief


def _bare(rng, field, grain, size, unit):
    relief = 1 + 0.06 * field + 0.05 * grain
    return _tone(rng, [166, 140, 106]) * relief[..., None], 95 * relief


def _water(rng, field, grain, size, unit):
    rows, cols = _coordinates(size)
    swell = np.sin(2 * np.pi * (rows * math.cos(rng.uniform(0, np.pi)) + cols) / (9 * unit))
    relief = 1 + 0.05 * field + 0.02 * swell
    return _tone(rng, [38, 66, 92]) * relief[..., None], 12 * relief


def _cropland(rng, field, grain, size, unit):
    """Parallel crop rows in one direction."""
    rows, cols = _coordinates(size)
    direction = rng.uniform(0, np.pi)
    period = rng.uniform(5, 9) * unit
    across = cols * math.cos(direction) + rows * math.sin(direction)
    stripes = (0.5 + 0.5 * np.sin((2 * np.pi / period) * across))[..., None]
    image = _tone(rng, [102, 142, 62]) * stripes + _tone(rng, [142, 122, 84]) * (1 - stripes)
    relief = 1 + 0.05 * grain
    return image * relief[..., None], (195 * stripes[..., 0] + 95 * (1 - stripes[..., 0])) * relief


def _grassland(rng, field, grain, size, unit):
    relief = 1 + 0.06 * field + 0.04 * grain
    return _tone(rng, [134, 158, 86]) * relief[..., None], 150 * relief


def _scrub(rng, field, grain, size, unit):
    """Mottled olive bushes over dry ground."""
    bushes = _sigmoid(3 * field)[..., None]
    image = _tone(rng, [84, 98, 56]) * bushes + _tone(rng, [126, 118, 78]) * (1 - bushes)
    relief = 1 + 0.05 * grain
    return image * relief[..., None], (185 * bushes[..., 0] + 115 * (1 - bushes[..., 0])) * relief


def _forest(rng, field, grain, size, unit):
    """Dense dark canopy: bright crowns with dark gaps between them."""
    canopy = 0.6 + 0.6 * _sigmoid(2.5 * field)
    return _tone(rng, [40, 72, 42]) * canopy[..., None], 200 * canopy


TEXTURES = {
    "artificial": (_artificial, None),
    "bare": (_bare, 5.0),
    "water": (_water, 16.0),
    "cropland": (_cropland, None),
    "grassland": (_grassland, 6.0),
    "scrub": (_scrub, 2.5),
    "forest": (_forest, 1.6),
}
