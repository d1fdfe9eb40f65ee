"""The conformance check of datasets: classes, splits, samples, fingerprints and the optional methods."""

from __future__ import annotations

import inspect
import json

import numpy as np

from xaibench.kit import contracts
from xaibench.kit.registry import signature_model
from xaibench.kit.testing._core import _call, _check_factory, _expect, _label, _valid

SPLITS = ("train", "val", "test")


def check_dataset(dataset, *, name: str | None = None, max_samples: int | None = None) -> None:
    """``classes``, ``split(name)`` for train/val/test (``Sample`` fields, one image size, unique ids, the
    same samples on every call), ``fingerprint()`` and the optional ``check``/``describe``/``fetch``/
    ``prepare``. ``max_samples`` limits the per-sample checks to the first samples of each split."""
    label = _label("datasets", dataset, name)
    if hasattr(dataset, "check"):
        dataset.check()  # a UserError here means missing data: let it through unchanged
    classes = getattr(dataset, "classes", None)
    _valid(label, "classes", contracts.validate_classes, classes)
    bands = contracts.capability(dataset, "image_bands", "datasets") or contracts.Bands.rgb3()
    _valid(label, "image_bands", contracts.validate_bands, bands)
    size, ids, counts = None, set(), {}
    for split in SPLITS:
        samples = _call(label, f"split({split!r})", dataset.split, split)
        _expect(hasattr(samples, "__len__") and hasattr(samples, "__iter__"), label,
                f"split({split!r}) returned {type(samples).__name__}", "return a list of xaibench.kit.contracts.Sample")
        samples = list(samples)
        counts[split] = len(samples)
        samples = samples[:max_samples]
        for sample in samples:
            size = _check_sample(sample, label, split, classes, size, ids, bands)
        again = list(dataset.split(split))[:max_samples]
        same = len(again) == len(samples) and all(
            a.id == b.id and a.label == b.label and np.array_equal(a.image, b.image)
            and _same_mask(a.mask, b.mask) and _same_mask(getattr(a, "reference", None), getattr(b, "reference", None))
            for a, b in zip(samples, again))
        _expect(same, label, f"split({split!r}) gave different samples on a second call",
                "make splits deterministic: same samples, same order, every time (seed any randomness)")
    _expect(counts["train"] > 0 and counts["test"] > 0, label, f"split sizes are {counts}",
            "train and test need at least one sample each (val may be empty)")
    fingerprint = _call(label, "fingerprint()", dataset.fingerprint)
    _expect(isinstance(fingerprint, str) and fingerprint and fingerprint == dataset.fingerprint(), label,
            f"fingerprint() returned {fingerprint!r}, or changed between calls",
            "return a non-empty string (e.g. a sha256 of parameters and content) that is the same every call")
    if hasattr(dataset, "describe"):
        details = _call(label, "describe()", dataset.describe)
        _expect(isinstance(details, dict), label, f"describe() returned {type(details).__name__}",
                "return a dict of JSON-serialisable facts")
        _call(label, "json.dumps(describe())", json.dumps, details)
    if hasattr(dataset, "fetch"):
        _expect(callable(dataset.fetch), label, "fetch is not callable", "define fetch(self) -> Path")
    prepare = getattr(type(dataset), "prepare", None)
    if prepare is not None:
        _expect(isinstance(inspect.getattr_static(type(dataset), "prepare"), staticmethod), label,
                "prepare is not a static method", "define it as @staticmethod def prepare(*, option=...)")
        _check_factory(prepare, f"{label} prepare()")
        _call(label, "building the option model of prepare()", signature_model, prepare, "prepare")


def _same_mask(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def _check_sample(sample, label, split, classes, size, ids, bands):
    _valid(label, f"split({split!r})", contracts.validate_sample, sample, len(classes), bands)
    where = f"{split} sample {sample.id!r}"
    _expect(isinstance(sample.id, str) and sample.id not in ids, label, f"{where}: id is not a unique string",
            "give every sample of the dataset its own string id")
    ids.add(sample.id)
    image = sample.image
    _expect(size is None or image.shape[:2] == size, label, f"{where}: image size {image.shape[:2]} differs from "
            f"{size}", "resize every image of the dataset to one size (e.g. an image_size parameter)")
    return image.shape[:2]
