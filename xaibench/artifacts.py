"""Where each stage's artifact lives in a run folder's cache, and how it is read back.

``DIR/cache/<folder>/<key><suffix>``: model weights as safetensors under ``models/``, everything else as
``.npz`` under the stage kind's name (the data stage has one file per split). Readers here never run a
component; the stage runner writes these files, scoring and figures read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .store import load_arrays

SPLITS = ("train", "val", "test")
SUFFIX = {"train": ".safetensors", "finetune": ".safetensors"}
FOLDER = {"train": "models", "finetune": "models"}


def unpack_masks(arrays: dict, index: int | None = None) -> np.ndarray:
    """The bool masks of a ``segment`` or ``accept`` artifact (``masks`` bit-packed along the last axis,
    ``width``); ``index`` picks one entry of the first axis (a segment stage's seeder)."""
    packed = arrays["masks"] if index is None else arrays["masks"][index]
    return np.unpackbits(packed, axis=-1, count=int(arrays["width"])).astype(bool)


class Artifacts:
    """The artifacts of one cache folder. Data splits are read once and kept (every stage needs them)."""

    def __init__(self, cache: Path):
        self.cache = Path(cache)
        self._data: dict[str, dict] = {}

    def path(self, kind: str, key: str, split: str | None = None) -> Path:
        suffix = SUFFIX.get(kind, ".npz")
        name = f"{key}.{split}{suffix}" if split else f"{key}{suffix}"
        return self.cache / FOLDER.get(kind, kind) / name

    def files(self, kind: str, key: str) -> list[Path]:
        """Every file the stage ``kind``/``key`` writes."""
        if kind == "data":
            return [self.path("data", key, s) for s in SPLITS]
        return [self.path(kind, key)]

    def exists(self, kind: str, key: str) -> bool:
        return all(p.is_file() for p in self.files(kind, key))

    def unreadable(self, kind: str, key: str) -> str | None:
        """Why a stage's files cannot be read back in full (weights: every tensor; arrays: every array), or
        None when they can."""
        for path in self.files(kind, key):
            try:
                if path.suffix == ".safetensors":
                    from safetensors.numpy import load_file

                    load_file(str(path))
                else:
                    load_arrays(path)
            except Exception as exc:  # any reader error means the file is not a finished artifact
                return f"{path}: {type(exc).__name__}: {exc}"
        return None

    def load(self, kind: str, key: str) -> dict[str, np.ndarray]:
        return load_arrays(self.path(kind, key))

    def data(self, key: str, split: str) -> dict:
        cache_key = f"{key}/{split}"
        if cache_key not in self._data:
            arrays = load_arrays(self.path("data", key, split))
            arrays.setdefault("references", arrays["masks"])  # written before datasets had references
            arrays.setdefault("has_reference", np.zeros(len(arrays["labels"]), bool))
            self._data[cache_key] = arrays
        return self._data[cache_key]

    def annotations(self, data_key: str, key: str | None) -> np.ndarray:
        """Training annotations bool (N, H, W): the dataset's own (``key`` None) or an ``accept`` stage's."""
        if key is None:
            return self.data(data_key, "train")["masks"]
        return unpack_masks(self.load("accept", key))


class Memo:
    """Loads each artifact once, for readers that visit the same files many times (scoring, figures)."""

    def __init__(self, artifacts: Artifacts):
        self.artifacts = artifacts
        self.loaded: dict[tuple, dict] = {}

    def __call__(self, kind: str, key: str) -> dict:
        if (kind, key) not in self.loaded:
            self.loaded[(kind, key)] = self.artifacts.load(kind, key)
        return self.loaded[(kind, key)]
