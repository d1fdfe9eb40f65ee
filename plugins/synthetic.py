"""The built-in ``synthetic`` dataset: procedurally generated overhead "aerial" tiles with exact masks.

It stands in for the paper's two datasets so the whole suite runs, and is tested, without downloads.

- ``task="binary"`` (like Kahikatea): classes ``["absent", "present"]``. Every tile is a textured
  grass/scrub/soil field with low-frequency colour variation and 1-3 distractor shrubs (olive or brown
  ones of any size, or small dark-green ones). A ``present`` tile also holds 1-4 target tree crowns:
  larger, dark blue-green, clumpy, with a shadow. ``mask`` is exactly the crown pixels; ``absent`` tiles
  have ``mask=None``, as negatives in the real data carry no annotation.
- ``task="multiclass"`` (like the LCDB super-classes): the label's land-cover texture fills one smooth
  region covering 35-80 % of the tile, and that region is the ``mask``; the rest is a patchwork of up to
  three other classes' textures, each smaller than the labelled region. Every sample has a mask.

The spurious cue is a straight pale gravel road. It lies in the background and never touches a mask pixel,
so masking the background removes it. In the binary task the cue is the road's presence (1) or absence (0).
In the multiclass task every tile has a road and the cue is the class ``c`` whose direction band holds the
road's angle: ``c * 180 / num_classes`` degrees from the x axis (columns), +-30 % of a band. With
``K = len(classes)``, the cue equals the label with probability ``spurious + (1 - spurious) / K`` in
``train`` and ``val`` (``0.5 + spurious / 2`` for binary), otherwise it is one of the other classes, spread
evenly; in ``test`` it is independent of the label. The rates are allotted exactly per class, not sampled,
so a split's agreement is the stated one up to rounding. ``cues(split)`` gives each sample's cue, and
each sample's ``group`` is ``"cue agrees"`` or ``"cue conflicts"``: the test split is then a cue-conflict
test set, and the leaderboard reports accuracy on each group and on the worst.

``bands="rgbn"`` adds a fourth, near-infrared band: ``image_bands`` is then red, green, blue, nir with the
first three as the colour composite (``Bands.rgb3()`` for ``"rgb"``), and images are uint8 (H, W, 4). The
band has random streams of its own, so the first three bands are exactly the ``"rgb"`` images. As in real
near-infrared, vegetation is bright and the rest dark (levels in 0..255 before the tile's illumination,
+-5 %): target crowns brightest, 205 +-8 % from crown to crown, with leaf texture and flat shading;
distractor shrubs clearly dimmer, 135-170; grass 140, scrubby ground 145, dry grass and stubble 105-115,
bare soil 80; the road 55; shadows 45 % of what they fall on. In the multiclass task each texture has its
own level, +-8 % per tile: forest 120-240 (canopy and gaps), cropland rows 95-195, scrub 115-185,
grassland 150, bare 95, artificial 65-90 with streets at 45, water 12.

``hide_in_rgb=True`` (binary task only) draws the crowns and their shadows in the
near-infrared band only, placed after the shrubs from the near-infrared stream: the red, green and blue
bands of a ``present`` tile are then drawn exactly as an ``absent`` tile's, so nothing in them tells the
classes apart but the road, which follows ``spurious`` as always (0: not at all), and the only evidence of
the crowns, which the mask still marks, is in band 4. That is a known answer for multispectral pipelines: a
model given only the colour composite is at chance (with ``spurious=0``, or on the test split), one given
all four bands can learn, and its explanations should point at crowns visible only in near-infrared. With
``bands="rgb"`` the same tiles come without their fourth band: the control, whose images are exactly the
colour bands of the ``"rgbn"`` ones.

``annotation_noise`` (see ``xaibench_plugins.annotation_noise``) degrades the ``train`` and ``val``
annotations the way human annotators do, keeping the exact masks as ``reference``; ``test`` stays exact. The
noise has random streams of its own, so it never changes images, labels, cues or exact masks.

The tiles are drawn by ``xaibench_plugins.synthetic_tiles``. Samples are generated lazily on the first
``split(name)`` and cached on the instance. Each split has its own random streams, derived from ``seed``
and the split's name, and each tile its own stream derived from those and its index, so the same
parameters give byte-identical samples and ``n_test`` does not affect ``train``. Parameters left at their
defaults are left out of ``params()``, so a dataset written without ``bands`` keeps its fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from xaibench.errors import ComponentParamsError
from xaibench.kit.contracts import Bands, Sample
from xaibench.kit.hookspecs import hookimpl
from xaibench_plugins.annotation_noise import AnnotationNoise, choose_degraded, degrade
from xaibench_plugins.synthetic_tiles import LAND_COVER_CLASSES, binary_tile, land_cover_tile

# Bump whenever the generated samples change for the same parameters: it is part of the fingerprint.
GENERATOR_VERSION = 2  # 2: samples carry their cue group
# Each sample's group: whether its spurious cue agrees with its label (in test, about 1/K of the samples).
ALIGNED, CONFLICTING = "cue agrees", "cue conflicts"

BINARY_CLASSES = ["absent", "present"]
SPLITS = ("train", "val", "test")
BANDS = {"rgb": Bands.rgb3(), "rgbn": Bands(("red", "green", "blue", "nir"), (0, 1, 2))}

class SyntheticDataset:
    """Procedural aerial tiles with exact relevance masks and a tunable spurious background cue.

    ``split(name)`` for name in ``"train" | "val" | "test"``: a list of ``Sample`` with ids like
    ``"train-00012"``, ``image`` uint8 (image_size, image_size, 3), or (..., 4) with ``bands="rgbn"``,
    ``label`` an index into ``classes`` (balanced to within one sample per class, shuffled), ``mask`` bool
    (image_size, image_size), or None for binary negatives. With ``annotation_noise``, annotated train and
    val samples have the degraded ``mask`` and the exact one as ``reference`` (the same where ``fraction``
    spared it); otherwise ``reference=None``.
    ``cues(name)``: int64 (n,), each sample's spurious-cue class, aligned with ``split(name)``.
    ``image_bands``: the images' ``Bands``. See the module docstring for the tiles, the cue and the bands.

    Parameters: ``task``; ``n_train``, ``n_val``, ``n_test`` samples per split; ``image_size`` in pixels
    (everything in a tile scales with it); ``seed`` of the data generation; ``spurious`` in [0, 1], how
    strongly the cue follows the label in train and val (0: not at all); ``num_classes``, 2 to 7, the first
    classes of ``LAND_COVER_CLASSES`` (multiclass only); ``annotation_noise``, an ``AnnotationNoise`` or a
    mapping of its fields (lengths in pixels); None, or noise that changes nothing, for exact annotations;
    ``bands``, ``"rgb"`` or ``"rgbn"`` (red, green, blue, near-infrared); ``hide_in_rgb``, True to draw the
    crowns in the near-infrared band only (binary task; else ``ComponentParamsError``), with ``bands="rgb"``
    the same tiles without that band."""

    def __init__(
        self,
        *,
        task: Literal["binary", "multiclass"] = "binary",
        n_train: Annotated[int, Field(ge=1)] = 240,
        n_val: Annotated[int, Field(ge=0)] = 40,
        n_test: Annotated[int, Field(ge=1)] = 120,
        image_size: Annotated[int, Field(ge=32)] = 96,
        seed: Annotated[int, Field(ge=0)] = 0,
        spurious: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9,
        num_classes: Annotated[int, Field(ge=2, le=7)] = 7,
        annotation_noise: AnnotationNoise | None = None,
        bands: Literal["rgb", "rgbn"] = "rgb",
        hide_in_rgb: bool = False,
    ):
        if task not in ("binary", "multiclass"):
            raise ValueError(f"task must be 'binary' or 'multiclass', got {task!r}")
        if not 2 <= num_classes <= len(LAND_COVER_CLASSES):
            raise ValueError(f"num_classes must be 2 to {len(LAND_COVER_CLASSES)}, got {num_classes}")
        if bands not in BANDS:
            raise ValueError(f"bands must be {' or '.join(map(repr, BANDS))}, got {bands!r}")
        if hide_in_rgb and task != "binary":
            raise ComponentParamsError([("hide_in_rgb", f"hides the crowns of the binary task in the red, green "
                                         f"and blue bands and shows them in near-infrared only, so it needs task: "
                                         f"binary, got task: {task}; set it, or leave hide_in_rgb out")])
        self.task = task
        self.n_train = n_train
        self.n_val = n_val
        self.n_test = n_test
        self.image_size = image_size
        self.seed = seed
        self.spurious = float(spurious)
        self.num_classes = num_classes
        self.bands = bands
        self.hide_in_rgb = bool(hide_in_rgb)
        # Noise that changes nothing is no noise: the same samples and the same fingerprint as without it.
        noise = None if annotation_noise is None else AnnotationNoise.model_validate(annotation_noise)
        self.annotation_noise = noise if noise is not None and noise.active else None
        self.classes = list(BINARY_CLASSES) if task == "binary" else LAND_COVER_CLASSES[:num_classes]
        self._generated: dict[str, tuple[list[Sample], np.ndarray]] = {}

    @property
    def image_bands(self) -> Bands:
        return BANDS[self.bands]

    def params(self) -> dict:
        """The parameters; ``annotation_noise`` only when set, as its non-default fields, and ``bands`` and
        ``hide_in_rgb`` only when not at their defaults (so older fingerprints stay valid)."""
        names = ("task", "n_train", "n_val", "n_test", "image_size", "seed", "spurious", "num_classes")
        params = {name: getattr(self, name) for name in names}
        if self.annotation_noise is not None:
            params["annotation_noise"] = self.annotation_noise.model_dump(exclude_defaults=True)
        if self.bands != "rgb":
            params["bands"] = self.bands
        if self.hide_in_rgb:
            params["hide_in_rgb"] = True
        return params

    def __repr__(self) -> str:
        return f"SyntheticDataset({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def fingerprint(self) -> str:
        content = {"dataset": "synthetic", "generator_version": GENERATOR_VERSION, "params": self.params()}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def split(self, name: str) -> list[Sample]:
        return list(self._generate(name)[0])

    def cues(self, name: str) -> np.ndarray:
        return self._generate(name)[1].copy()

    def _generate(self, name: str) -> tuple[list[Sample], np.ndarray]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        if name not in self._generated:
            size = {"train": self.n_train, "val": self.n_val, "test": self.n_test}[name]
            num_classes = len(self.classes)
            chance = 1.0 / num_classes
            agreement = chance if name == "test" else self.spurious + (1.0 - self.spurious) * chance
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
            plan_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(key, 0)))
            labels, cues = _plan(plan_rng, size, num_classes, agreement)
            draw = binary_tile if self.task == "binary" else land_cover_tile
            if self.hide_in_rgb:
                draw = functools.partial(draw, hide_in_rgb=True)
            samples = []
            for index, (label, cue) in enumerate(zip(labels.tolist(), cues.tolist())):
                rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(key, 1, index)))
                # The near-infrared band has streams of its own, so the colour bands are the "rgb" images.
                nir_rng = None if self.bands == "rgb" and not self.hide_in_rgb else np.random.default_rng(
                    np.random.SeedSequence(self.seed, spawn_key=(key, 4, index)))
                image, mask = draw(rng, self.image_size, label, cue, num_classes, nir_rng)
                if self.bands == "rgb" and image.shape[-1] == 4:  # hidden crowns, shown without their band
                    image = np.ascontiguousarray(image[..., :3])
                samples.append(Sample(f"{name}-{index:05d}", image, label, mask,
                                      group=ALIGNED if cue == label else CONFLICTING))
            if self.annotation_noise is not None and name != "test":
                samples = self._degrade(samples, key)
            self._generated[name] = (samples, cues)
        return self._generated[name]

    def _degrade(self, samples: list[Sample], key: int) -> list[Sample]:
        """``samples`` with degraded masks and the exact ones as references, from streams of their own."""
        annotated = [index for index, sample in enumerate(samples) if sample.mask is not None]
        choice_rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(key, 2)))
        chosen = choose_degraded(len(annotated), self.annotation_noise.fraction, choice_rng)
        for index, degraded in zip(annotated, chosen.tolist()):
            exact = samples[index].mask
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(key, 3, index)))
            mask = degrade(exact, self.annotation_noise, rng) if degraded else exact
            samples[index] = dataclasses.replace(samples[index], mask=mask, reference=exact)
        return samples


@hookimpl
def register_datasets(register):
    register("synthetic", SyntheticDataset)


# -- labels and cues ---------------------------------------------------------------------------------------


def _plan(rng, size: int, num_classes: int, agreement: float) -> tuple[np.ndarray, np.ndarray]:
    """Balanced, shuffled labels and cues with cue == label for a share ``agreement`` of each class."""
    counts = np.full(num_classes, size // num_classes)
    counts[rng.permutation(num_classes)[: size % num_classes]] += 1
    labels = rng.permutation(np.repeat(np.arange(num_classes), counts))
    cues = np.empty(size, np.int64)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        share = np.full(num_classes, (1.0 - agreement) / (num_classes - 1))
        share[label] = agreement
        cue_counts = _apportion(rng, share * len(members))
        cues[members] = rng.permutation(np.repeat(np.arange(num_classes), cue_counts))
    return labels, cues


def _apportion(rng, expected: np.ndarray) -> np.ndarray:
    """Integer counts summing to round(sum(expected)), largest remainders first, ties broken at random."""
    counts = np.floor(expected + 1e-9).astype(np.int64)
    missing = int(round(expected.sum())) - int(counts.sum())
    order = np.lexsort((rng.random(len(expected)), -(expected - counts)))
    counts[order[:missing]] += 1
    return counts
