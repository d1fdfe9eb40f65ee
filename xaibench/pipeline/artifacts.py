"""Where each stage's artifact lives in a run folder's cache, and how it is read back.

``DIR/cache/<folder>/<key><suffix>``: model weights as safetensors under ``models/``; the data splits and
the explanations as *array folders* (``<key>.<split>/`` and ``<key>/``, one ``.npy`` file per array), so
that they are read a batch at a time and never whole; the small artifacts (logits, seeds, segmentations,
accepted annotations) as ``.npz``. Readers here never run a component; the stage runner writes these
files, scoring and figures read them.

An array folder's big arrays come back as ``Rows``: an array-like over the file that reads the rows it is
indexed with (``rows[batch]``) with plain file reads. Nothing is memory-mapped, so a pass over a split
larger than memory costs memory for one batch, not for the split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xaibench.kit.contracts import Bands, Prompts
from xaibench.pipeline import bands as band_statistics
from xaibench.pipeline.plan import KINDS
from xaibench.pipeline.store import load_arrays

SPLITS = ("train", "val", "test")
# Rows read at a time where a stage or scoring passes over a whole split's maps or masks (a few MB at any
# image size in use), so the maps and masks of a whole split are never in memory together.
CHUNK = 256
# Arrays read whole when an array folder is opened (small: one value per sample); the rest are Rows.
WHOLE = {"labels", "has_mask", "has_reference", "ids", "groups", "classes", "index", "band_names", "composite",
         "band_mean", "band_std", "band_median"}


class Rows:
    """A C-ordered ``.npy`` file read row by row: ``rows[i]``, ``rows[a:b]``, ``rows[index_array]``,
    ``rows[bool_mask]`` return numpy arrays of those rows only, read with ``os.pread``; ``len``,
    ``shape``, ``dtype`` and ``ndim`` are those of the array. ``np.asarray(rows)`` reads it all."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not read row by row")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _file(self) -> int:
        """The file's descriptor, opened on the first read and kept."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def _read(self, start: int, count: int) -> np.ndarray:
        size = count * self.row_bytes
        data = os.pread(self._file(), size, self.offset + start * self.row_bytes) if size else b""
        if len(data) != size:
            raise OSError(f"{self.path}: {len(data)} of {size} bytes read (the file is truncated)")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])] if not np.isscalar(key[0]) else self[key[0]][key[1:]]
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self._read(index, 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._read(start, max(0, stop - start))
            key = np.arange(start, stop, step)
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + len(self), index).astype(np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"rows {index.min()}..{index.max()} of {len(self)}")
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        if not len(index):
            return out
        fd = self._file()
        rows = out.reshape(len(index), -1).view(np.uint8)
        for i, row in enumerate(index.tolist()):  # straight into the result, one read per row
            if os.preadv(fd, [memoryview(rows[i])], self.offset + row * self.row_bytes) != self.row_bytes:
                raise OSError(f"{self.path}: row {row} could not be read whole (the file is truncated)")
        return out

    def __array__(self, dtype=None, copy=None):
        data = self._read(0, len(self))
        return data if dtype is None else data.astype(dtype)


class ArrayFolderWriter:
    """Builds an array folder row by row: ``column(name, shape, dtype)`` opens a ``.npy`` of that shape in
    a staging folder, rows are assigned into it (``writer[name][i] = row``), and ``close()`` renames the
    folder into place. Nothing of the array but the row being written is held in memory."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", suffix=".tmp", dir=self.folder.parent))
        self.columns: dict[str, np.memmap] = {}

    def column(self, name: str, shape: tuple, dtype) -> np.ndarray:
        array = np.lib.format.open_memmap(self.staging / f"{name}.npy", mode="w+", dtype=dtype, shape=tuple(shape))
        self.columns[name] = array
        return array

    def __getitem__(self, name: str):
        return self.columns[name]

    def save(self, name: str, value: np.ndarray) -> None:
        np.save(self.staging / f"{name}.npy", np.asarray(value), allow_pickle=False)

    def close(self) -> None:
        for array in self.columns.values():
            array.flush()
        self.columns.clear()
        finish_array_folder(self.staging, self.folder)

    def abandon(self) -> None:
        self.columns.clear()
        shutil.rmtree(self.staging, ignore_errors=True)


def finish_array_folder(staging: Path, folder: Path) -> None:
    """Rename a complete ``staging`` folder to ``folder``; an older ``folder`` is moved aside first."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)


def read_array_folder(folder: Path, whole=WHOLE) -> dict:
    """The arrays of an array folder: those named in ``whole`` loaded, the others as ``Rows``."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.glob("*.npy")):
        name = path.stem
        out[name] = np.load(path, allow_pickle=False) if name in whole else Rows(path)
    return out


class PackedMasks:
    """Bit-packed masks (N, H, W/8) unpacked only for the rows asked for: ``masks[index]`` → bool."""

    def __init__(self, packed: np.ndarray, width: int):
        self.packed, self.width = packed, int(width)
        self.shape = (packed.shape[0], packed.shape[1], self.width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return np.unpackbits(self.packed[key], axis=-1, count=self.width).astype(bool)


# -- typed readers of each artifact kind: every stage, scorer, figure and export reads through these ----------


def segmentations(segmented: dict, slot: int) -> PackedMasks:
    """The masks of a ``segment`` artifact for the prompts of its ``slot``-th seeder, (M, H, W) bool
    rows over the explained images, unpacked only for the rows asked for."""
    return PackedMasks(segmented["masks"][slot], segmented["width"])


def accepted(accept: dict) -> PackedMasks:
    """Every training annotation an ``accept`` artifact holds, (N, H, W) bool rows, unpacked only for the
    rows asked for."""
    return PackedMasks(accept["masks"], accept["width"])


def pack_prompts(prompts: list[Prompts]) -> dict[str, np.ndarray]:
    """A ``seeds`` artifact's arrays: per explained image its points (padded with NaN) and labels (padded
    with -1), as many columns as the longest prompt set has points; where any set has boxes, ``boxes``
    (padded with NaN rows) and ``has_boxes``; where any has a dense map, ``dense`` (zeros where none) and
    ``has_dense``. ``prompts_at`` reads one back."""
    width = max([len(p.labels) for p in prompts], default=0)
    points = np.full((len(prompts), width, 2), np.nan, dtype=np.float32)
    labels = np.full((len(prompts), width), -1, dtype=np.int8)
    for i, p in enumerate(prompts):
        points[i, : len(p.labels)] = p.points
        labels[i, : len(p.labels)] = p.labels
    out = {"points": points, "labels": labels}
    has_boxes = np.array([p.boxes is not None for p in prompts], dtype=bool)
    if has_boxes.any():
        boxes = np.full((len(prompts), max(len(p.boxes) for p in prompts if p.boxes is not None), 4), np.nan,
                        dtype=np.float32)
        for i, p in enumerate(prompts):
            if p.boxes is not None:
                boxes[i, : len(p.boxes)] = p.boxes
        out.update(boxes=boxes, has_boxes=has_boxes)
    has_dense = np.array([p.dense is not None for p in prompts], dtype=bool)
    if has_dense.any():
        shape = next(p.dense.shape for p in prompts if p.dense is not None)
        dense = np.zeros((len(prompts), *shape), dtype=np.float32)
        for i, p in enumerate(prompts):
            if p.dense is not None:
                dense[i] = p.dense
        out.update(dense=dense, has_dense=has_dense)
    return out


def prompts_at(seeds: dict, row: int) -> Prompts:
    """The prompt set a ``seeds`` artifact holds for its ``row``-th explained image, padding dropped."""
    keep = seeds["labels"][row] >= 0
    boxes = dense = None
    if "boxes" in seeds and seeds["has_boxes"][row]:
        found = seeds["boxes"][row]
        boxes = found[np.isfinite(found).all(axis=1)]
    if "dense" in seeds and seeds["has_dense"][row]:
        dense = np.asarray(seeds["dense"][row], dtype=np.float32)
    return Prompts(seeds["points"][row][keep], seeds["labels"][row][keep].astype(np.int64), boxes, dense)


def map_chunks(explained: dict, size: int = CHUNK) -> Iterator[tuple[slice, np.ndarray]]:
    """The maps of an ``explain`` artifact ``size`` rows at a time: ``(rows, float32 maps)``, ``rows`` the
    positions among the explained images (``explained["index"][rows]`` are their images), so the maps of
    a whole split are never in memory together."""
    for start in range(0, len(explained["index"]), size):
        rows = slice(start, start + size)
        yield rows, np.asarray(explained["maps"][rows], dtype=np.float32)


class Artifacts:
    """The artifacts of one cache folder. Data splits are opened once and kept open (every stage reads
    them), as ``read_array_folder`` gives them: per-sample values loaded, images and masks as ``Rows``."""

    def __init__(self, cache: Path):
        self.cache = Path(cache)
        self._data: dict[str, dict] = {}
        self._bands: dict[str, Bands] = {}

    def path(self, kind: str, key: str, split: str | None = None) -> Path:
        stage_kind = KINDS[kind]
        name = f"{key}.{split}{stage_kind.suffix}" if split else f"{key}{stage_kind.suffix}"
        return self.cache / stage_kind.directory / name

    def files(self, kind: str, key: str) -> list[Path]:
        """Every file the stage ``kind``/``key`` writes."""
        arrays = KINDS[kind].arrays
        if kind == "data":
            return [self.path("data", key, s) / f"{name}.npy" for s in SPLITS for name in arrays]
        if arrays:
            return [self.path(kind, key) / f"{name}.npy" for name in arrays]
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
                elif path.suffix == ".npy":
                    rows = Rows(path)
                    if path.stat().st_size != rows.offset + rows.row_bytes * len(rows):
                        raise OSError("the file is truncated")
                else:
                    load_arrays(path)
            except Exception as exc:  # any reader error means the file is not a finished artifact
                return f"{path}: {type(exc).__name__}: {exc}"
        return None

    def load(self, kind: str, key: str) -> dict:
        """A stage's arrays: an ``.npz`` loaded, an array folder opened (``read_array_folder``)."""
        if KINDS[kind].arrays:
            return read_array_folder(self.path(kind, key))
        return load_arrays(self.path(kind, key))

    def data(self, key: str, split: str) -> dict:
        cache_key = f"{key}/{split}"
        if cache_key not in self._data:
            self._data[cache_key] = read_array_folder(self.path("data", key, split))
        return self._data[cache_key]

    def bands(self, key: str) -> Bands:
        """The bands of the data ``key``'s images, with every per-band statistic (those its dataset did not
        declare worked out from its training images, ``xaibench.pipeline.bands.of_split``)."""
        if key not in self._bands:
            self._bands[key] = band_statistics.of_split(self.data(key, "train"))
        return self._bands[key]

    def annotations(self, data_key: str, key: str | None):
        """Training annotations, (N, H, W) bool rows: the dataset's own (``key`` None) or an ``accept``
        stage's, read or unpacked only for the rows asked for."""
        if key is None:
            return self.data(data_key, "train")["masks"]
        return accepted(self.load("accept", key))


class Memo:
    """Loads each artifact once, for readers that visit the same files many times (scoring, figures)."""

    def __init__(self, artifacts: Artifacts):
        self.artifacts = artifacts
        self.loaded: dict[tuple, dict] = {}

    def __call__(self, kind: str, key: str) -> dict:
        if (kind, key) not in self.loaded:
            self.loaded[(kind, key)] = self.artifacts.load(kind, key)
        return self.loaded[(kind, key)]
