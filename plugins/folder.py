"""The built-in ``folder`` dataset: your own labelled images, one folder per split and class.

Layout (``train/`` and ``test/`` are required, ``val/`` is optional; no split is generated)::

    <root>/train/<class>/<name>.png|jpg|jpeg|tif|tiff     images, any size
    <root>/train/masks/<class>/<name>.png                 optional mask of train/<class>/<name>.<ext>
    <root>/val/...                                        same as train, optional
    <root>/test/...                                       same as train

Classes are the ``classes`` parameter or, by default, the sorted folder names in ``train/`` (``masks`` is
reserved and hidden names are ignored). Every split must hold a folder for every class (it may be empty).
A mask is a PNG of its image's size: non-zero pixels are the foreground, or with ``mask_white_background``
every pixel that is not pure white; fully transparent pixels are background (``xaibench.kit.images.read_mask``).
Images and masks are read as every viewer shows them, their EXIF (or TIFF) orientation applied (a mask
drawn on a rotated phone photo lines up with it); sizes are the displayed ones.
A mask without any foreground pixel means "no annotation" (``mask=None``). Images without a mask file have
``mask=None``. Other files in a class folder are ignored.

Bands. PNG and JPEG images are read as 8-bit RGB (``xaibench.kit.images.read_rgb``: grey, palette, 16-bit
are converted, alpha dropped). TIFFs and GeoTIFFs are read band by band with rasterio (the geo extra;
``xaibench.kit.rasters.read_bands``): every band but alpha, 8- or 16-bit unsigned, signed or float, so
multispectral imagery (red, green, blue, near-infrared) keeps all its bands. Every image of a folder has
the same number of bands (alpha not counted) and the same kind of pixels (uint8, uint16, ..., or float);
a file that differs is an error naming it. Parameters:

- ``bands``: the 1-based band numbers of the files to use, in the order wanted (default every band but
  alpha; an alpha band given here is used as an image band);
- ``rgb``: the three 1-based band numbers shown as red, green and blue (the colour composite figures,
  segmenters and the report see), each one of ``bands``; default the bands the files label red, green
  and blue (GDAL colour interpretation), else 1, 2, 3, or where fewer than three bands are used the first
  of them as grey;
- ``scale``: how pixels become [0, 1]: ``dtype`` (default) divides unsigned integers by their type's
  maximum (255, 65535), keeps 8-bit images uint8, takes float pixels as already in [0, 1] (a value outside
  is an error naming the file and the range found) and refuses signed integers; ``[low, high]`` for every
  band, or one ``[low, high]`` per used band, maps a value v to (v - low) / (high - low) and clips it to
  [0, 1]: values below low become 0 and above high become 1 (images are float32 then);
- ``band_names``: one name per used band; default the files' band descriptions where every used band has
  one, else their colour interpretations (red, green, blue, gray, ...) where those are distinct and none
  is undefined, else ``band 1``, ``band 4``, ... (the file's band numbers).

No data: a pixel equal to its band's nodata value (the GeoTIFF's), or NaN in a float band, is set to 0 in
that band after scaling (never NaN); ``describe()`` counts per split the images holding such pixels and the
share of pixels with no data in at least one used band. The dataset's ``image_bands`` names the bands and
the composite's positions among them; an RGB folder's (PNG/JPEG, or 3-band 8-bit RGB TIFFs, default
parameters) are ``Bands.rgb3()`` and its images uint8 exactly as before bands existed.

Example: 4-band 16-bit GeoTIFFs (red, green, blue, near-infrared as 0-10000 reflectance)::

    datasets:
      - name: folder
        root: data/aerial
        scale: [0, 10000]            # reflectance 10000 is 1.0; above it is clipped to 1
        band_names: [red, green, blue, nir]

and ``bands: [4, 1, 2]`` with ``rgb: [4, 1, 2]`` would use near-infrared, red and green only, shown as a
false-colour composite.

Bad files (empty, truncated, corrupt, not an image, a mask of the wrong size, bands unlike the others)
raise ``UserError`` naming the file with ``on_error: raise``; with ``on_error: skip`` the image is left out,
one warning per split names the first few, and ``describe()`` (``xaibench data info folder --root ...``)
lists them all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Bands, Sample
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.images import read_mask
from xaibench.kit.rasters import (RGB_FILE, BandInfo, Scale, band_info, default_band_names, is_tiff, normal_scale,
                                  read_bands, resize_bands, scale_bands, scale_problem, scale_ranges)

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASKS = "masks"
SHOWN = 5  # bad files named in a warning
# Bump whenever the samples change for the same files and parameters: it is part of the fingerprint.
# 2: EXIF orientation applied to images and masks; 3: TIFFs read band by band with rasterio (every band but
# alpha, 16-bit and float pixels kept, no-data set to 0), so TIFFs other than 8-bit RGB(A) give new samples.
LOADER_VERSION = 3
RGB_LOADER_VERSION = 2  # a folder without TIFFs: its PNG and JPEG files give the samples version 2 gave

BandNumber = Annotated[int, Field(ge=1)]


@dataclasses.dataclass(frozen=True)
class BandLayout:
    """How a folder's image files become images, worked out once from their headers.

    ``indexes``: the 1-based file bands read, in channel order. ``ranges``: one (low, high) per channel, or
    None to scale by the pixels' dtype (``xaibench.kit.rasters.scale_bands``). ``bands``: the dataset's
    ``image_bands``. ``mismatched``: file → the error of
    each image whose bands are unlike the others' (only with ``on_error: skip``; otherwise the first raises)."""

    indexes: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...] | None
    bands: Bands
    mismatched: dict[Path, str]


class FolderDataset:
    """Images in ``<root>/<split>/<class>/`` with optional masks in ``<root>/<split>/masks/<class>/``.

    ``split(name)``: a list of ``Sample`` in sorted path order, ``id`` the path relative to the root (e.g.
    ``"train/forest/a.png"``), ``image`` (image_size, image_size, C), one channel per band of
    ``image_bands`` (bilinear resize, band by band): uint8 where the files are 8-bit and ``scale`` is
    ``dtype`` (RGB folders: exactly the pixels of an RGB resize), float32 in [0, 1] otherwise; ``label``
    the class index, ``mask`` bool (image_size, image_size) (nearest resize) or None. An absent ``val/``
    gives an empty val split. Loaded splits are cached on the instance.

    Bands (TIFFs are read band by band; PNG and JPEG are RGB): ``bands`` the 1-based band numbers to use
    (default all but alpha); ``rgb`` the three shown as red, green, blue (default those labelled so, else 1,
    2, 3; one band: grey);
    ``scale`` ``dtype`` (divide by 255 or 65535; floats must be in [0, 1]) or ``[low, high]``, for all bands
    or one pair per band, mapping (v - low) / (high - low) clipped to [0, 1]; ``band_names`` one per band
    (default the files' band descriptions, else colour interpretations, else ``band N``). No-data pixels
    (the nodata value, NaN) become 0. E.g. 4-band 16-bit reflectance GeoTIFFs: ``scale: [0, 10000]``.
    The module docstring has the details."""

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
        bands: Annotated[list[BandNumber], Field(min_length=1)] | None = None,
        rgb: Annotated[list[BandNumber], Field(min_length=3, max_length=3)] | None = None,
        scale: Scale = "dtype",
        band_names: list[str] | None = None,
    ):
        problems = []
        if classes is not None:
            if len(classes) < 2 or len(set(classes)) != len(classes):
                problems.append(("classes", f"give at least 2 distinct class names, got {classes}"))
            if MASKS in classes or any(not c or "/" in c or c.startswith(".") for c in classes):
                problems.append(("classes", f"class names are folder names other than {MASKS!r}, got {classes}"))
        problems += _band_problems(bands, rgb, scale, band_names)
        if problems:
            raise ComponentParamsError(problems)
        self.root = root
        self.image_size = image_size
        self._classes = list(classes) if classes is not None else None
        self.on_error = on_error
        self.mask_white_background = mask_white_background
        self.bands = [int(b) for b in bands] if bands is not None else None
        self.rgb = [int(b) for b in rgb] if rgb is not None else None
        self.scale = normal_scale(scale)
        self.band_names = list(band_names) if band_names is not None else None
        self._layout_found: BandLayout | None = None
        self._splits: dict[str, list[Sample]] = {}
        self._skipped: dict[str, list[tuple[str, str]]] = {}
        self._empty_masks: dict[str, list[str]] = {}
        self._nodata: dict[str, tuple[int, int, int]] = {}  # split → (images with no-data, no-data pixels, pixels)

    def params(self) -> dict:
        """The parameters; ``bands``, ``rgb``, ``scale`` and ``band_names`` only where not at their default,
        so an RGB folder's parameters (and fingerprint) are what they were before bands existed."""
        out = {"root": self.root, "image_size": self.image_size, "classes": self._classes,
               "on_error": self.on_error, "mask_white_background": self.mask_white_background}
        for name, default in (("bands", None), ("rgb", None), ("scale", "dtype"), ("band_names", None)):
            if getattr(self, name) != default:
                out[name] = getattr(self, name)
        return out

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

    @property
    def image_bands(self) -> Bands:
        """The images' bands: names, and the colour composite's positions among them (``Bands.rgb3()`` for
        an RGB folder read with the default parameters)."""
        return self._layout().bands

    def _splits_present(self) -> list[str]:
        return [s for s in SPLITS if (self.root_path / s).is_dir()]

    def check(self) -> None:
        """Raise ``UserError`` if the root, ``train/`` or ``test/``, or a class folder of a split is missing,
        or the images' bands do not fit each other or the band parameters (read from the files' headers)."""
        self._check_folders()
        self._layout()

    def _check_folders(self) -> None:
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

    # -- the bands ---------------------------------------------------------------------------------------
    def _layout(self) -> BandLayout:
        """The bands every image is read with, from the files' headers (TIFFs are opened, other formats are
        RGB without opening them): the band count (alpha not counted) and kind of pixels most files share,
        those of the first such file, which the band parameters must fit."""
        if self._layout_found is not None:
            return self._layout_found
        self._check_folders()
        found: list[tuple[Path, BandInfo, tuple[int, str]]] = []
        for split in self._splits_present():
            for path, _ in self._images(split):
                try:
                    info = band_info(path) if is_tiff(path) else RGB_FILE
                except UserError:
                    if self.on_error == "raise":
                        raise
                    continue  # unreadable: skipped when its split is loaded, with this error
                found.append((path, info, (len(info.image_bands), info.family)))
        keys = Counter(key for _, _, key in found)
        common = keys.most_common(1)[0][0] if keys else (3, "uint8")  # ties: the first met
        reference, info = next(((p, i) for p, i, key in found if key == common), (None, RGB_FILE))
        mismatched = {}
        for path, _, key in found:
            if key != common:
                mismatched[path] = (
                    f"{path}: has {_kind(key)}, but {keys[common]} other image(s) of this folder dataset have "
                    f"{_kind(common)} (e.g. {reference}); every image of a folder dataset has the same bands: "
                    f"convert this one or remove it")
                if self.on_error == "raise":
                    raise UserError(mismatched[path])
        self._layout_found = self._fit(reference or "the images", info, mismatched)
        return self._layout_found

    def _fit(self, where, info: BandInfo, mismatched: dict[Path, str]) -> BandLayout:
        """The layout of the band parameters on files like ``where`` (``info``); ``UserError`` where they do
        not fit (a band the file lacks, a composite of unused bands, one name or range too many)."""
        indexes = tuple(self.bands) if self.bands is not None else info.image_bands
        beyond = [b for b in indexes if b > info.count]
        if beyond:
            raise UserError(f"bands: band {beyond[0]} asked for, but {where} has {info.count} band(s), numbered 1 to "
                            f"{info.count}; give band numbers of the files")
        listed = f"{list(indexes)}" + ("" if self.bands is not None else f" (every band of {where} but alpha)")
        used = f"the bands used, {listed}"
        if self.rgb is not None:
            missing = [b for b in self.rgb if b not in indexes]
            if missing:
                raise UserError(f"rgb: band {missing[0]} is not one of {used}; the colour composite is made of "
                                f"used bands")
            composite = tuple(self.rgb)
        elif all(sum(info.colour[b - 1] == c for b in indexes) == 1 for c in ("red", "green", "blue")):
            composite = tuple(next(b for b in indexes if info.colour[b - 1] == c) for c in ("red", "green", "blue"))
        elif {1, 2, 3} <= set(indexes):
            composite = (1, 2, 3)
        elif len(indexes) < 3:
            composite = (indexes[0],) * 3  # grey
        else:
            raise UserError(f"rgb: {used} do not include bands 1, 2 and 3, the default colour composite; give "
                            f"rgb: the three of them to show as red, green and blue")
        try:
            ranges = scale_ranges(self.scale, len(indexes))
        except ValueError as exc:
            raise UserError(f"scale: {exc}; the bands used are {listed}") from None
        if ranges is None:  # signed integers have no range to scale by: scale_bands says so before any is read
            scale_bands(np.zeros((0, 0, len(indexes)), info.dtype), None, None, where)
        if self.band_names is not None and len(self.band_names) != len(indexes):
            raise UserError(f"band_names: {len(self.band_names)} names for {len(indexes)} bands, {used}; give one "
                            f"name per band")
        names = self.band_names or default_band_names(info, indexes)
        bands = Bands(tuple(names), tuple(indexes.index(b) for b in composite))
        return BandLayout(indexes, ranges, bands, mismatched)

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
            nodata = [0, 0, 0]
            if (self.root_path / name).is_dir():
                for path, label in self._images(name):
                    try:
                        sample, mask_empty, missing = self._load(name, path, label)
                    except UserError as exc:
                        if self.on_error == "raise":
                            raise
                        skipped.append((path.relative_to(self.root_path).as_posix(), str(exc)))
                        continue
                    if mask_empty:
                        empty.append(self._mask_path(name, path).relative_to(self.root_path).as_posix())
                    samples.append(sample)
                    nodata = [nodata[0] + bool(missing[0]), nodata[1] + missing[0], nodata[2] + missing[1]]
            if skipped:
                warnings.warn(f"folder dataset {self.root_path}: skipped {len(skipped)} unreadable file(s) in "
                              f"split {name!r}: {_first([f for f, _ in skipped])} (on_error: skip; "
                              f"`xaibench data info folder --root {self.root_path}` lists them all)", stacklevel=2)
            if empty:
                warnings.warn(f"folder dataset {self.root_path}: {len(empty)} mask(s) in split {name!r} have no "
                              f"foreground pixel and count as no annotation: {_first(empty)}", stacklevel=2)
            self._splits[name], self._skipped[name], self._empty_masks[name] = samples, skipped, empty
            self._nodata[name] = tuple(nodata)
        return list(self._splits[name])

    def _load(self, split: str, path: Path, label: int) -> tuple[Sample, bool, tuple[int, int]]:
        """The sample of one image file, whether its mask file had no foreground pixel, and (pixels with
        no data in a used band, pixels) of the file."""
        from PIL import Image

        layout = self._layout()
        if path in layout.mismatched:
            raise UserError(layout.mismatched[path])
        size = (self.image_size, self.image_size)
        pixels, nodata, _ = read_bands(path, layout.indexes)
        height, width = pixels.shape[:2]
        image = resize_bands(scale_bands(pixels, nodata, layout.ranges, path), size)
        missing = int(nodata.any(axis=-1).sum()) if nodata is not None else 0
        mask, empty = None, False
        mask_path = self._mask_path(split, path)
        if mask_path.is_file():
            foreground = read_mask(mask_path, size=(width, height), white_background=self.mask_white_background,
                                   image_path=path)
            if foreground.any():
                resized = Image.fromarray(foreground.astype(np.uint8) * 255).resize(size, Image.NEAREST)
                mask = np.asarray(resized) > 127
            else:
                empty = True
        sample = Sample(path.relative_to(self.root_path).as_posix(), image, label, mask)
        return sample, empty, (missing, height * width)

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
        files = self._files()
        version = LOADER_VERSION if any(Path(f).suffix.lower() in (".tif", ".tiff") for f, _, _ in files) \
            else RGB_LOADER_VERSION
        content = {"dataset": "folder", "loader_version": version, "params": {**params, "classes": self.classes},
                   "files": files}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def describe(self) -> dict:
        """Facts for ``xaibench data info``: the root, the splits found, the bands, per split the images
        skipped as unreadable (count and each file with its error), the masks without foreground, the
        images holding no-data pixels and the share of pixels (at the files' size) with no data in at least
        one used band."""
        for split in SPLITS:
            self.split(split)
        return {
            "root": str(self.root_path),
            "splits_found": self._splits_present(),
            "bands": self.image_bands.describe(),
            "on_error": self.on_error,
            "skipped": {s: len(self._skipped[s]) for s in SPLITS},
            "skipped_files": [{"file": f, "error": e} for s in SPLITS for f, e in self._skipped[s]],
            "empty_masks": {s: len(self._empty_masks[s]) for s in SPLITS},
            "empty_mask_files": [f for s in SPLITS for f in self._empty_masks[s]],
            "nodata_images": {s: self._nodata[s][0] for s in SPLITS},
            "nodata_share": {s: self._nodata[s][1] / self._nodata[s][2] if self._nodata[s][2] else 0.0
                             for s in SPLITS},
        }


def _band_problems(bands, rgb, scale, band_names) -> list[tuple[str, str]]:
    """(parameter, problem) of each band parameter that is wrong on its own or beside the others; those
    that depend on the files (a band they lack) are checked when the files are read."""
    problems = []
    if bands is not None and (not bands or len(set(bands)) != len(bands)):
        problems.append(("bands", f"give each band number once, got {bands}"))
    if rgb is not None:
        if len(rgb) != 3:
            problems.append(("rgb", f"give three band numbers (red, green, blue), got {rgb}"))
        elif bands is not None and not set(rgb) <= set(bands):
            problems.append(("rgb", f"{rgb} includes band(s) {[b for b in rgb if b not in bands]}, which are not in "
                                    f"bands {bands}; the colour composite is made of used bands"))
    problem = scale_problem(scale)
    if problem is None and bands is not None:
        try:
            scale_ranges(scale, len(bands))
        except ValueError as exc:
            problem = f"{exc} (bands {bands})"
    if problem is not None:
        problems.append(("scale", problem))
    if band_names is not None:
        if not band_names or not all(isinstance(n, str) and n for n in band_names) \
                or len(set(band_names)) != len(band_names):
            problems.append(("band_names", f"give distinct non-empty names, got {band_names}"))
        elif bands is not None and len(band_names) != len(bands):
            problems.append(("band_names", f"{len(band_names)} names for the {len(bands)} bands {bands}; give one "
                                           f"name per band"))
    return problems


def _kind(key: tuple[int, str]) -> str:
    """E.g. ``4 bands of uint16 pixels`` for a (band count, pixel family) key."""
    count, family = key
    return f"{count} band{'s' * (count != 1)} of {family} pixels"


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


@hookimpl
def register_datasets(register):
    register("folder", FolderDataset)
