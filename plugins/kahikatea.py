"""The built-in ``kahikatea`` dataset: aerial photo tiles with and without kahikatea trees, with expert
masks of the trees on the positives (Zenodo record 5059769, about 142 MB).

Archive layout (optionally wrapped in one top-level folder): ``data/ve_positive/*.png`` (232 tiles),
``data/ve_negative/*.png`` (287 tiles) and ``expl/ve_positive/<same name>.png``, the masks. Tile names are
``Biospatial_<flight>_<frame>_<RR>_<CC>.png``: each aerial photo ``<flight>_<frame>`` is cut into a grid of
tiles, and neighbouring tiles of one photo look alike, so a photo's tiles always share a split.

A mask PNG has its image's size; kahikatea pixels keep their colour and everything else is pure white
(255, 255, 255). Foreground is every pixel that is not pure white and, in an RGBA mask, not fully
transparent. Negatives carry no mask (``mask=None``).

Known leak: the original sizes differ by class. Most tiles are 368×246, some positives are RGBA at
404×269 or 442×295/296, and all 552×369 tiles (flight 20160603U) are negatives, so a model could read the
label off the size. Every tile is therefore resized to one ``image_size``×``image_size`` (which also
squashes the 3:2 tiles to a square); ``describe()`` lists the original sizes per class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
from pydantic import Field

from xaibench.errors import ComponentParamsError, NotFetched, UserError
from xaibench.kit.contracts import Sample
from xaibench.kit.download import MANIFEST_NAME, default_data_root
from xaibench.kit.download import download as download_file
from xaibench.kit.download import read_manifest, safe_extract_zip, sha256_file, write_manifest
from xaibench.kit.files import atomic_write_text
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.images import open_image, read_mask, read_rgb
from xaibench.kit.splits import METHOD as SPLIT_METHOD
from xaibench.kit.splits import grouped_stratified_split

ZENODO_URL = "https://zenodo.org/record/5059769/files/kahikatea.zip?download=1"
ARCHIVE_NAME = "kahikatea.zip"
SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["file", "photo", "label", "split", "method"]
# Bump whenever the samples change for the same files and parameters: it is part of the fingerprint.
LOADER_VERSION = 1
DEFAULT_SPLIT = {"val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 0}

TILE_NAME = re.compile(r"Biospatial_(?P<photo>[^_]+_[^_]+)_(?P<row>\d+)_(?P<col>\d+)\.png", re.IGNORECASE)
SHA256 = r"^[0-9a-fA-F]{64}$"


class Tile(NamedTuple):
    name: str  # file name, unique in the dataset
    photo: str  # <flight>_<frame>
    label: int  # 0 absent, 1 present
    image: Path
    mask: Path | None


class KahikateaDataset:
    """Kahikatea presence tiles (classes ``["absent", "present"]``) with tree masks on the positives.

    ``split(name)`` for name in ``"train" | "val" | "test"``: a list of ``Sample`` sorted by id, where
    ``id`` is the file name without ``.png``, ``image`` uint8 (image_size, image_size, 3) RGB (alpha
    dropped, bilinear resize), ``label`` 0 or 1, ``mask`` bool (image_size, image_size) (nearest resize)
    or None for tiles without a mask file. Loaded splits are cached on the instance.

    Splits are stratified by label and grouped by photo: every tile of one photo lands in the same split,
    and each split holds about ``val_fraction`` / ``test_fraction`` (the rest: train) of each class's
    tiles (``xaibench.kit.splits.grouped_stratified_split`` over per-photo label counts; every split with a
    non-zero fraction gets a photo when there are enough photos). The assignment is generated from the
    data on first load, deterministically from the tiles and ``split_seed``, and written to
    ``<root>/splits.csv`` (columns file, photo, label, split, method;
    ``splits-val<v>-test<t>-seed<s>.csv`` for non-default split parameters). Once written, the file is
    read instead of regenerated, so copying it to another machine pins the split there too, and editing
    its split column moves tiles. A file whose method column is missing or names another split method
    than ``xaibench.kit.splits.METHOD`` holds a split made by another rule: it is generated again and
    replaced, with a warning, rather than reused.

    Parameters: ``root``, the dataset folder (default ``$XAIBENCH_DATA/kahikatea`` or the user cache, see
    ``xaibench.kit.download.default_data_root``); ``image_size`` in pixels; ``download``: fetch the data in
    ``check()`` when it is missing (never done silently otherwise); ``url`` and ``sha256`` of the archive
    (the sha256 of the first download is recorded and later downloads are held to it); the split fractions
    and ``split_seed``."""

    classes = ["absent", "present"]

    location_params = ("root", "download", "url", "sha256")  # where the data is, not what it is: kept out of cache keys
    path_params = ("root",)  # a relative path in a grid is read from the grid file's folder

    def __init__(
        self,
        *,
        root: str | None = None,
        image_size: Annotated[int, Field(ge=16, le=4096)] = 224,
        download: bool = False,
        url: str = ZENODO_URL,
        sha256: Annotated[str, Field(pattern=SHA256)] | None = None,
        val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = DEFAULT_SPLIT["val_fraction"],
        test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = DEFAULT_SPLIT["test_fraction"],
        split_seed: Annotated[int, Field(ge=0)] = DEFAULT_SPLIT["split_seed"],
    ):
        if val_fraction + test_fraction >= 1.0:
            raise ComponentParamsError(
                [("val_fraction", f"val_fraction + test_fraction must be below 1, got "
                                  f"{val_fraction} + {test_fraction}")]
            )
        self.root = root
        self.image_size = image_size
        self.download = download
        self.url = url
        self.sha256 = sha256.lower() if sha256 else None
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = split_seed
        self._tiles: list[Tile] | None = None
        self._assignment: dict[str, str] | None = None
        self._splits: dict[str, list[Sample]] = {}

    def params(self) -> dict:
        return {
            "root": self.root,
            "image_size": self.image_size,
            "download": self.download,
            "url": self.url,
            "sha256": self.sha256,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
        }

    def __repr__(self) -> str:
        return f"KahikateaDataset({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    # -- where the data is -----------------------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser() if self.root else default_data_root("kahikatea")

    @property
    def archive_path(self) -> Path:
        return self.root_path / ARCHIVE_NAME

    @property
    def split_path(self) -> Path:
        split = {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                 "split_seed": self.split_seed}
        if split == DEFAULT_SPLIT:
            return self.root_path / "splits.csv"
        name = f"splits-val{self.val_fraction:g}-test{self.test_fraction:g}-seed{self.split_seed}.csv"
        return self.root_path / name

    def _base(self) -> Path | None:
        """The folder holding ``data/``: the root, or the one folder the archive wrapped everything in."""
        root = self.root_path
        if not root.is_dir():
            return None
        wrappers = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
        found = [p for p in [root, *wrappers]
                 if (p / "data" / "ve_positive").is_dir() and (p / "data" / "ve_negative").is_dir()]
        if len(found) > 1:
            raise UserError(f"{root} holds more than one Kahikatea data folder ({', '.join(map(str, found))}); "
                            f"keep one")
        return found[0] if found else None

    def _ready(self) -> bool:
        """The data is extracted: its folders exist and no manifest says an extraction is unfinished."""
        manifest = read_manifest(self.root_path)
        if manifest is not None and not manifest.get("complete"):
            return False
        return self._base() is not None

    def _missing_error(self) -> UserError:
        root = self.root_path
        archive = self.archive_path
        present = f" (it will use the archive already at {archive})" if archive.is_file() else ""
        return UserError(
            f"the kahikatea dataset is not at {root}; run `xaibench data fetch kahikatea --root {root}`{present} "
            f"or set `download: true` for the dataset in the grid"
        )

    # -- getting it --------------------------------------------------------------------------------------
    def check(self, *, fetch: bool = True) -> None:
        """Raise ``UserError`` if the data is missing, or fetch it when ``download`` is True (with ``fetch=False``,
        a dry run, raise ``NotFetched`` instead)."""
        if self._ready():
            self._check_recorded_hash(read_manifest(self.root_path))
            return
        if not self.download:
            raise self._missing_error()
        if not fetch:
            raise NotFetched(f"the kahikatea dataset is not at {self.root_path}; a real run downloads it from "
                             f"{self.url} (download: true)")
        self.fetch()

    def fetch(self) -> Path:
        """Download (or reuse an archive already in the root), verify and extract the dataset; return the root.

        A complete dataset is left alone. The archive's sha256 is checked against ``sha256`` or, without
        it, against the one recorded by an earlier fetch, and recorded in the manifest; the archive is kept
        next to the data."""
        root = self.root_path
        manifest = read_manifest(root)
        if self._ready():
            self._check_recorded_hash(manifest)
            return root
        created, had_archive = not root.exists(), self.archive_path.is_file()
        try:
            return self._fetch(root, manifest)
        except UserError:
            # A refused fetch (a bomb, the wrong archive) leaves what was there before: nothing, or the
            # user's own archive. An interrupted one keeps its download to resume.
            if not had_archive:
                self.archive_path.unlink(missing_ok=True)
            if manifest is None:
                (root / MANIFEST_NAME).unlink(missing_ok=True)
            if created and root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            raise

    def _fetch(self, root: Path, manifest: dict | None) -> Path:
        expected = self.sha256 or (manifest or {}).get("sha256")
        archive = self.archive_path
        if archive.is_file():
            actual, url = sha256_file(archive), (manifest or {}).get("url")
            if expected is not None and actual != expected:
                raise UserError(
                    f"{archive} has sha256 {actual}, expected {expected}; delete it to download it again, "
                    f"or replace it with the right file"
                )
        else:
            actual, url = download_file(self.url, archive, sha256=expected), self.url
        # Until extraction finishes the manifest marks the folder unusable and keeps only a hash that was
        # already pinned, so an archive that fails to extract does not pin its own hash for later downloads.
        record = {"dataset": "kahikatea", "url": url, "archive": ARCHIVE_NAME}
        write_manifest(root, {**record, "sha256": expected, "complete": False})
        files = safe_extract_zip(archive, root)
        if self._base() is None:
            raise UserError(f"{archive} does not hold the Kahikatea layout (data/ve_positive, data/ve_negative, "
                            f"expl/ve_positive); check the --url, delete the archive and fetch again")
        self._tiles = self._assignment = None
        self._splits.clear()
        write_manifest(root, {**record, "sha256": actual, "files": files, "complete": True})
        return root

    def _check_recorded_hash(self, manifest: dict | None) -> None:
        recorded = (manifest or {}).get("sha256")
        if self.sha256 and recorded and recorded != self.sha256:
            raise UserError(
                f"the kahikatea dataset at {self.root_path} was extracted from an archive with sha256 {recorded}, "
                f"not the sha256 {self.sha256} asked for; remove {self.root_path} and fetch again, or drop sha256"
            )

    # -- the files ---------------------------------------------------------------------------------------
    def tiles(self) -> list[Tile]:
        """Every tile, sorted by file name. Raises ``UserError`` for missing data or a malformed file name."""
        if self._tiles is None:
            if not self._ready():
                raise self._missing_error()
            base = self._base()
            masks_dir = base / "expl" / "ve_positive"
            tiles, seen = [], {}
            for label, folder in ((1, "ve_positive"), (0, "ve_negative")):
                for path in sorted((base / "data" / folder).iterdir()):
                    if path.name.startswith("."):
                        continue
                    match = TILE_NAME.fullmatch(path.name)
                    if match is None or not path.is_file():
                        raise UserError(f"{path}: not a tile named Biospatial_<flight>_<frame>_<row>_<col>.png; "
                                        f"remove it from the dataset folder")
                    if path.name in seen:
                        raise UserError(f"{path.name} is both in {seen[path.name]} and in {path.parent}; "
                                        f"a tile has one label")
                    seen[path.name] = path.parent
                    mask = masks_dir / path.name if label else None
                    tiles.append(Tile(path.name, match["photo"], label, path,
                                      mask if mask is not None and mask.is_file() else None))
            self._tiles = sorted(tiles)
        return self._tiles

    def _relative_files(self) -> list[tuple[str, int]]:
        base = self._base()
        return sorted((p.relative_to(base).as_posix(), p.stat().st_size)
                      for sub in ("data", "expl") if (base / sub).is_dir()
                      for p in (base / sub).rglob("*") if p.is_file())

    # -- splits ------------------------------------------------------------------------------------------
    def assignment(self, *, write: bool = True) -> dict[str, str]:
        """File name → ``"train" | "val" | "test"``, read from the split file, or generated (and written
        there when ``write``) if it does not exist yet or was made by another split method."""
        if self._assignment is not None:
            return self._assignment
        tiles = self.tiles()
        path = self.split_path
        assignment = self._read_split_file(path, tiles) if path.is_file() else None
        if assignment is None:
            assignment = self._generate(tiles)
            if not write:
                return assignment
            if path.is_file():
                warnings.warn(f"kahikatea: {path} holds a split made by another split method than "
                              f"{SPLIT_METHOD}; it is replaced by the split this method makes")
            self._write_split_file(path, tiles, assignment)
        self._assignment = assignment
        return assignment

    def _generate(self, tiles: list[Tile]) -> dict[str, str]:
        photo_counts: dict[str, Counter] = defaultdict(Counter)
        for tile in tiles:
            photo_counts[tile.photo][tile.label] += 1
        fractions = {"train": 1.0 - self.val_fraction - self.test_fraction, "val": self.val_fraction,
                     "test": self.test_fraction}
        photo_split = grouped_stratified_split(photo_counts, fractions, self.split_seed)
        return {tile.name: photo_split[tile.photo] for tile in tiles}

    def _write_split_file(self, path: Path, tiles: list[Tile], assignment: dict[str, str]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(SPLIT_COLUMNS)
        for tile in tiles:
            writer.writerow([tile.name, tile.photo, self.classes[tile.label], assignment[tile.name],
                             SPLIT_METHOD])
        atomic_write_text(path, buffer.getvalue(), newline="")

    def _read_split_file(self, path: Path, tiles: list[Tile]) -> dict[str, str] | None:
        """The assignment the split file pins, None if another split method made it; ``UserError`` if it is
        malformed or does not match the tiles."""
        by_name = {t.name: t for t in tiles}
        redo = f"delete {path} to generate it again from the data"
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if sorted(reader.fieldnames or []) == sorted(c for c in SPLIT_COLUMNS if c != "method"):
                return None  # written before the split method was recorded
            if sorted(reader.fieldnames or []) != sorted(SPLIT_COLUMNS):
                raise UserError(f"{path}: columns must be {', '.join(SPLIT_COLUMNS)}, got "
                                f"{', '.join(reader.fieldnames or [])}; {redo}")
            assignment = {}
            for row in reader:
                if row["method"] != SPLIT_METHOD:
                    return None
                where = f"{path}:{reader.line_num}"
                tile = by_name.get(row["file"])
                if tile is None:
                    raise UserError(f"{where}: {row['file']!r} is not a tile of the dataset; {redo}")
                if row["photo"] != tile.photo or row["label"] != self.classes[tile.label]:
                    raise UserError(f"{where}: {row['file']} is photo {tile.photo}, label "
                                    f"{self.classes[tile.label]}, not {row['photo']}, {row['label']}; {redo}")
                if row["split"] not in SPLITS:
                    raise UserError(f"{where}: split must be one of {', '.join(SPLITS)}, got {row['split']!r}")
                if row["file"] in assignment:
                    raise UserError(f"{where}: {row['file']} is listed twice; {redo}")
                assignment[row["file"]] = row["split"]
        missing = sorted(set(by_name) - set(assignment))
        if missing:
            raise UserError(f"{path} has no split for {len(missing)} tile(s), e.g. {missing[0]}; {redo}")
        return assignment

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        if name not in self._splits:
            assignment = self.assignment()
            self._splits[name] = [self._load(tile) for tile in self.tiles() if assignment[tile.name] == name]
        return list(self._splits[name])

    def _load(self, tile: Tile) -> Sample:
        from PIL import Image

        size = (self.image_size, self.image_size)
        pixels = read_rgb(tile.image)
        rgb = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR), dtype=np.uint8)
        mask = None
        if tile.mask is not None:
            height, width = pixels.shape[:2]
            foreground = read_mask(tile.mask, size=(width, height), white_background=True, image_path=tile.image)
            mask = np.asarray(Image.fromarray(foreground.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        return Sample(tile.name[: -len(".png")], rgb, tile.label, mask)

    def source_files(self, name: str) -> dict[str, Path]:
        """Sample id → its original tile file, for ``xaibench data audit``."""
        assignment = self.assignment(write=False)
        return {tile.name[: -len(".png")]: tile.image for tile in self.tiles() if assignment[tile.name] == name}

    # -- identity and facts ------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Changes with the archive (its sha256, or the files' names and sizes without a manifest), the
        parameters that change samples, and the split assignment in use."""
        manifest = read_manifest(self.root_path) if self._ready() else None
        if manifest and manifest.get("sha256"):
            source = {"archive_sha256": manifest["sha256"]}
        else:
            self.tiles()  # raises the missing-data error
            files = json.dumps(self._relative_files(), separators=(",", ":"))
            source = {"files_sha256": hashlib.sha256(files.encode()).hexdigest()}
        assignment = sorted(self.assignment(write=False).items())
        content = {
            "dataset": "kahikatea",
            "loader_version": LOADER_VERSION,
            "params": {"image_size": self.image_size, "val_fraction": self.val_fraction,
                       "test_fraction": self.test_fraction, "split_seed": self.split_seed},
            **source,
            "splits_sha256": hashlib.sha256(json.dumps(assignment, separators=(",", ":")).encode()).hexdigest(),
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def describe(self) -> dict:
        """Facts for ``xaibench data info``: the root, the archive's sha256, the original image sizes and
        modes per class (different sizes per class leak the label), mask counts and split counts."""
        root = self.root_path
        if not self._ready():
            return {"root": str(root), "ready": False, "fetch": f"xaibench data fetch kahikatea --root {root}"}
        tiles = self.tiles()
        sizes: dict[str, Counter] = defaultdict(Counter)
        modes: dict[str, Counter] = defaultdict(Counter)
        for tile in tiles:
            with open_image(tile.image) as image:
                sizes[f"{image.size[0]}x{image.size[1]}"][self.classes[tile.label]] += 1
                modes[image.mode][self.classes[tile.label]] += 1
        assignment = self.assignment(write=False)
        split_counts = {s: dict(Counter(self.classes[t.label] for t in tiles if assignment[t.name] == s))
                        for s in SPLITS}
        masks_dir = self._base() / "expl" / "ve_positive"
        mask_files = {p.name for p in masks_dir.glob("*") if p.is_file()} if masks_dir.is_dir() else set()
        return {
            "root": str(root),
            "ready": True,
            "archive_sha256": (read_manifest(root) or {}).get("sha256"),
            "split_file": str(self.split_path) if self.split_path.is_file() else None,
            "tiles_per_class": dict(Counter(self.classes[t.label] for t in tiles)),
            "photos": len({t.photo for t in tiles}),
            "masks": sum(t.mask is not None for t in tiles),
            "positives_without_mask": sum(t.label == 1 and t.mask is None for t in tiles),
            "masks_without_tile": len(mask_files - {t.name for t in tiles}),
            "original_sizes": {k: dict(v) for k, v in sorted(sizes.items())},
            "original_modes": {k: dict(v) for k, v in sorted(modes.items())},
            "sizes_of_one_class_only": sorted(k for k, v in sizes.items() if len(v) == 1),
            "split_counts": split_counts,
        }


@hookimpl
def register_datasets(register):
    register("kahikatea", KahikateaDataset)
