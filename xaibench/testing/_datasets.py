"""The conformance check of datasets: classes, splits, samples, fingerprints and the optional methods."""

from __future__ import annotations

import inspect
import json

import numpy as np

from ..registry import signature_model
from ._core import _call, _check_factory, _expect, _label

SPLITS = ("train", "val", "test")


def check_dataset(dataset, *, name: str | None = None, max_samples: int | None = None) -> None:
    """``classes``, ``split(name)`` for train/val/test (``Sample`` fields, one image size, unique ids, the
    same samples on every call), ``fingerprint()`` and the optional ``check``/``describe``/``fetch``/
    ``prepare``. ``max_samples`` limits the per-sample checks to the first samples of each split."""
    label = _label("datasets", dataset, name)
    if hasattr(dataset, "check"):
        dataset.check()  # a UserError here means missing data: let it through unchanged
    classes = getattr(dataset, "classes", None)
    _expect(isinstance(classes, (list, tuple)) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes), label, f"classes is {classes!r}",
            "set classes to a list of at least 2 distinct class-name strings")
    size, ids, counts = None, set(), {}
    for split in SPLITS:
        samples = _call(label, f"split({split!r})", dataset.split, split)
        _expect(hasattr(samples, "__len__") and hasattr(samples, "__iter__"), label,
                f"split({split!r}) returned {type(samples).__name__}", "return a list of xaibench.contracts.Sample")
        samples = list(samples)
        counts[split] = len(samples)
        samples = samples[:max_samples]
        for sample in samples:
            size = _check_sample(sample, label, split, classes, size, ids)
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


def _check_sample(sample, label, split, classes, size, ids):
    missing = [f for f in ("id", "image", "label", "mask") if not hasattr(sample, f)]
    _expect(not missing, label, f"a {split} sample lacks {missing}", "return xaibench.contracts.Sample objects")
    where = f"{split} sample {sample.id!r}"
    _expect(isinstance(sample.id, str) and sample.id not in ids, label, f"{where}: id is not a unique string",
            "give every sample of the dataset its own string id")
    ids.add(sample.id)
    image = sample.image
    _expect(isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3,
            label, f"{where}: image is {getattr(image, 'dtype', type(image).__name__)} "
            f"{getattr(image, 'shape', '')}", "images are uint8 numpy arrays (H, W, 3), RGB")
    _expect(size is None or image.shape[:2] == size, label, f"{where}: image size {image.shape[:2]} differs from "
            f"{size}", "resize every image of the dataset to one size (e.g. an image_size parameter)")
    _expect(isinstance(sample.label, (int, np.integer)) and not isinstance(sample.label, bool)
            and 0 <= sample.label < len(classes), label, f"{where}: label {sample.label!r}",
            f"labels are int indices into classes (0 to {len(classes) - 1})")
    mask = sample.mask
    _expect(mask is None or (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == image.shape[:2]),
            label, f"{where}: mask is {getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}",
            "masks are bool numpy arrays (H, W) matching the image, or None where there is no annotation")
    reference = getattr(sample, "reference", None)
    _expect(reference is None or (mask is not None and isinstance(reference, np.ndarray) and reference.dtype == bool
                                  and reference.shape == image.shape[:2]),
            label, f"{where}: reference is {getattr(reference, 'dtype', type(reference).__name__)} "
            f"{getattr(reference, 'shape', '')} (mask {'None' if mask is None else 'given'})",
            "a reference is a bool numpy array (H, W) matching the image, given only beside a mask")
    return image.shape[:2]
