"""The built-in ``folder`` dataset: your own labelled images, one folder per split and class.

Layout (``train/`` and ``test/`` are required, ``val/`` is optional; no split is generated)::

    <root>/train/<class>/<name>.png|jpg|jpeg|tif|tiff     images, any size and pixel type read_rgb takes
    <root>/train/masks/<class>/<name>.png                 optional mask of train/<class>/<name>.<ext>
    <root>/val/...                                        same as train, optional
    <root>/test/...                                       same as train

Classes are the ``classes`` parameter or, by default, the sorted folder names in ``train/`` (``masks`` is
reserved and hidden names are ignored). Every split must hold a folder for every class (it may be empty).
A mask is a PNG of its image's size: non-zero pixels are the foreground, or with ``mask_white_background``
every pixel that is not pure white; fully transparent pixels are background (``xaibench.kit.images.read_mask``).
Images and masks are read as every viewer shows them, their EXIF orientation applied (a mask drawn on a
rotated phone photo lines up with it); sizes are the displayed ones.
A mask without any foreground pixel means "no annotation" (``mask=None``). Images without a mask file have
``mask=None``. Other files in a class folder are ignored.

Bad files (empty, truncated, corrupt, not an image, a mask of the wrong size) raise ``UserError`` naming
the file with ``on_error: raise``; with ``on_error: skip`` the image is left out, one warning per split
names the first few, and ``describe()`` (``xaibench data info folder --root ...``) lists them all.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Sample
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.images import read_mask, read_rgb

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASKS = "masks"
SHOWN = 5  # bad files named in a warning
# Bump whenever the samples change for the same files and parameters: it is part of the fingerprint.
LOADER_VERSION = 2  # 2: EXIF orientation applied to images and masks


class FolderDataset:
    """Images in ``<root>/<split>/<class>/`` with optional masks in ``<root>/<split>/masks/<class>/``.

    ``split(name)``: a list of ``Sample`` in sorted path order, ``id`` the path relative to the root (e.g.
    ``"train/forest/a.png"``), ``image`` uint8 (image_size, image_size, 3) RGB (bilinear resize), ``label``
    the class index, ``mask`` bool (image_size, image_size) (nearest resize) or None. An absent ``val/``
    gives an empty val split. Loaded splits are cached on the instance."""

    location_params = ("root",)  # where the data is, not what it is: kept out of cache keys
    path_params = ("root",)  # a relative path in a grid is read from the grid file's folder

    def __init__(
        self,
        *,
        root: str,
        image_size: Annotated[int, Field(ge=8, le=4096)] = 224,
        classes: list[str] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        mask_white_background: bool = False,
    ):
        if classes is not None:
            problems = []
            if len(classes) < 2 or len(set(classes)) != len(classes):
                problems.append(f"give at least 2 distinct class names, got {classes}")
            if MASKS in classes or any(not c or "/" in c or c.startswith(".") for c in classes):
                problems.append(f"class names are folder names other than {MASKS!r}, got {classes}")
            if problems:
                raise ComponentParamsError([("classes", p) for p in problems])
        self.root = root
        self.image_size = image_size
        self._classes = list(classes) if classes is not None else None
        self.on_error = on_error
        self.mask_white_background = mask_white_background
        self._splits: dict[str, list[Sample]] = {}
        self._skipped: dict[str, list[tuple[str, str]]] = {}
        self._empty_masks: dict[str, list[str]] = {}

    def params(self) -> dict:
        return {"root": self.root, "image_size": self.image_size, "classes": self._classes,
                "on_error": self.on_error, "mask_white_background": self.mask_white_background}

    def __repr__(self) -> str:
        return f"FolderDataset({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            self._check_root()
            train = self.root_path / "train"
            found = sorted(p.name for p in train.iterdir()
                           if p.is_dir() and p.name != MASKS and not p.name.startswith("."))
            if len(found) < 2:
                raise UserError(f"{train} holds {len(found)} class folder(s) ({', '.join(found) or 'none'}); a "
                                f"dataset needs at least 2, one folder of images per class")
            self._classes = found
        return self._classes

    def _splits_present(self) -> list[str]:
        return [s for s in SPLITS if (self.root_path / s).is_dir()]

    def check(self) -> None:
        """Raise ``UserError`` if the root, ``train/`` or ``test/``, or a class folder of a split is missing."""
        self._check_root()
        root = self.root_path
        for split in self._splits_present():
            for name in self.classes:
                if not (root / split / name).is_dir():
                    raise UserError(f"split {split!r} has no folder for class {name!r}: create {root / split / name} "
                                    f"(it may be empty) or leave the class out of classes")

    def _check_root(self) -> None:
        root = self.root_path
        if not root.is_dir():
            raise UserError(f"the folder dataset root {root} {'is a file' if root.exists() else 'does not exist'}; "
                            f"point root at a folder holding train/<class>/ and test/<class>/ image folders")
        for split in REQUIRED_SPLITS:
            if not (root / split).is_dir():
                raise UserError(f"{root} has no {split}/ folder; the folder dataset needs train/<class>/ and "
                                f"test/<class>/ (val/ is optional)")

    # -- the files ---------------------------------------------------------------------------------------
    def _images(self, split: str) -> list[tuple[Path, int]]:
        """(image path, label) of a split, sorted by path."""
        folder = self.root_path / split
        found = []
        for label, name in enumerate(self.classes):
            for path in (folder / name).iterdir():
                if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((path, label))
        return sorted(found)

    def _mask_path(self, split: str, image: Path) -> Path:
        return self.root_path / split / MASKS / image.parent.name / f"{image.stem}.png"

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        if name not in self._splits:
            self.check()
            samples, skipped, empty = [], [], []
            if (self.root_path / name).is_dir():
                for path, label in self._images(name):
                    try:
                        sample, mask_empty = self._load(name, path, label)
                    except UserError as exc:
                        if self.on_error == "raise":
                            raise
                        skipped.append((path.relative_to(self.root_path).as_posix(), str(exc)))
                        continue
                    if mask_empty:
                        empty.append(self._mask_path(name, path).relative_to(self.root_path).as_posix())
                    samples.append(sample)
            if skipped:
                warnings.warn(f"folder dataset {self.root_path}: skipped {len(skipped)} unreadable file(s) in "
                              f"split {name!r}: {_first([f for f, _ in skipped])} (on_error: skip; "
                              f"`xaibench data info folder --root {self.root_path}` lists them all)", stacklevel=2)
            if empty:
                warnings.warn(f"folder dataset {self.root_path}: {len(empty)} mask(s) in split {name!r} have no "
                              f"foreground pixel and count as no annotation: {_first(empty)}", stacklevel=2)
            self._splits[name], self._skipped[name], self._empty_masks[name] = samples, skipped, empty
        return list(self._splits[name])

    def _load(self, split: str, path: Path, label: int) -> tuple[Sample, bool]:
        """The sample of one image file, and whether its mask file had no foreground pixel."""
        from PIL import Image

        size = (self.image_size, self.image_size)
        pixels = read_rgb(path)
        image = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR), dtype=np.uint8)
        mask, empty = None, False
        mask_path = self._mask_path(split, path)
        if mask_path.is_file():
            height, width = pixels.shape[:2]
            foreground = read_mask(mask_path, size=(width, height), white_background=self.mask_white_background,
                                   image_path=path)
            if foreground.any():
                resized = Image.fromarray(foreground.astype(np.uint8) * 255).resize(size, Image.NEAREST)
                mask = np.asarray(resized) > 127
            else:
                empty = True
        return Sample(path.relative_to(self.root_path).as_posix(), image, label, mask), empty

    def source_files(self, name: str) -> dict[str, Path]:
        """Sample id → its original image file, for ``xaibench data audit``."""
        return {sample.id: self.root_path / sample.id for sample in self.split(name)}

    # -- identity and facts ------------------------------------------------------------------------------
    def _files(self) -> list[tuple[str, int, int]]:
        """(path relative to the root, size in bytes, mtime in ns) of every file of every split, sorted."""
        root = self.root_path
        files = []
        for split in self._splits_present():
            for path in (root / split).rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    files.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
        return sorted(files)

    def fingerprint(self) -> str:
        """sha256 of the loader version, the parameters except ``root`` and every file's relative path,
        size and modification time: moving the folder keeps it, touching a file changes it."""
        self.check()
        params = {k: v for k, v in self.params().items() if k not in self.location_params}
        content = {"dataset": "folder", "loader_version": LOADER_VERSION, "params": {**params, "classes": self.classes},
                   "files": self._files()}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def describe(self) -> dict:
        """Facts for ``xaibench data info``: the root, the splits found, per split the images skipped as
        unreadable (count and each file with its error) and the masks without foreground."""
        for split in SPLITS:
            self.split(split)
        return {
            "root": str(self.root_path),
            "splits_found": self._splits_present(),
            "on_error": self.on_error,
            "skipped": {s: len(self._skipped[s]) for s in SPLITS},
            "skipped_files": [{"file": f, "error": e} for s in SPLITS for f, e in self._skipped[s]],
            "empty_masks": {s: len(self._empty_masks[s]) for s in SPLITS},
            "empty_mask_files": [f for s in SPLITS for f in self._empty_masks[s]],
        }


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


@hookimpl
def register_datasets(register):
    register("folder", FolderDataset)
