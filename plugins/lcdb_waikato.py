"""The ``lcdb-waikato`` dataset: LINZ aerial tiles of the Waikato labelled with LCDB v5 land-cover classes.

Two steps. ``prepare`` (in ``lcdb_prepare``, needs the geo extra) cuts GeoTIFFs into tiles and labels each
from the LCDB polygons, see that module for how and for the prepared folder's layout;
``LcdbWaikatoDataset`` reads the prepared folder: the PNG tiles of 8-bit RGB imagery with Pillow alone,
the GeoTIFF tiles of other imagery (every band but alpha: 16-bit, float, near-infrared...) with rasterio.
Their bands are those ``prepare`` recorded in prepare.json (``image_bands``); 16-bit and float tiles are
scaled into [0, 1] as the ``folder`` dataset scales them (``scale``: ``dtype`` or ``[low, high]``, see
``xaibench.kit.rasters.scale_bands``).

Splits are stratified by label and grouped spatially: tiles are binned into square blocks of
``block_tiles`` x ``block_tiles`` tile widths on a grid in map coordinates (by each tile's centre), and a
block goes to one split whole, so neighbouring tiles, also those cut from adjacent rasters, share a split;
only tiles on either side of a block edge can sit in different splits. Blocks are assigned by
``xaibench.kit.splits.grouped_stratified_split`` (largest first, ties in a ``split_seed`` order, each to the
split whose per-class shortfall it reduces most; a split with a non-zero fraction gets a block whenever
there are enough blocks), stratified by the prepared labels. The assignment depends on the prepared labels
and the split parameters, not on ``groups``, so a tile stays in its split whatever the class mapping.
"""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Bands, Sample
from xaibench.kit.files import atomic_write_text
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.rasters import Scale, normal_scale, read_bands, resize_bands, scale_bands, scale_problem, scale_ranges
from xaibench.kit.splits import METHOD as SPLIT_METHOD
from xaibench.kit.splits import grouped_stratified_split
from xaibench_plugins.lcdb_prepare import FORMAT_VERSION, LABEL_COLUMNS, class_lookup, class_mapping, csv_text, prepare

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["tile_id", "block", "split", "split_key"]
PREPARE_HINT = "run: xaibench data prepare lcdb-waikato --imagery DIR --lcdb FILE --out DIR"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LcdbWaikatoDataset:
    """Tiles of a folder written by ``prepare``, labelled with LCDB super-classes.

    ``classes``: the super-class names of the mapping, all of them in mapping order whether present or
    not (by default ``lcdb_prepare.DEFAULT_GROUPS``: artificial, bare, water, cropland, grassland, scrub,
    forest), so labels mean the same for every prepared area. ``split(name)``: ``Sample`` with ``id`` the
    tile id, ``image`` (image_size, image_size, C), one channel per band of ``image_bands`` (uint8 where
    the tiles are 8-bit and ``scale`` is ``dtype``: RGB imagery's as always; else float32 in [0, 1]),
    ``label`` index into ``classes``, ``mask`` bool (image_size, image_size), True on the label's
    polygons; in labels.csv order.

    Parameters: ``root`` the prepared folder; ``image_size`` in pixels (tiles are resized, bilinear);
    ``val_fraction`` and ``test_fraction`` of the tiles, per class; ``split_seed``; ``block_tiles`` the side
    of a spatial split block in tiles (see the module docstring); ``groups`` super-class name to LCDB codes,
    relabelling the tiles from their per-code pixel counts (a tile no group covers to the prepared
    ``min_coverage`` is left out; tiles skipped at preparation stay out: prepare with ``groups`` for those);
    ``scale`` how tile pixels become [0, 1]: ``dtype`` (8-bit kept as uint8, unsigned integers divided by
    their type's maximum, floats taken as in [0, 1]) or ``[low, high]`` for all bands or one per band, a
    value v becoming (v - low) / (high - low) clipped to [0, 1] (e.g. ``[0, 10000]`` for reflectance);
    no-data pixels become 0.
    """

    prepare = staticmethod(prepare)

    location_params = ("root",)  # where the data is, not what it is: kept out of cache keys
    path_params = ("root",)  # a relative path in a grid is read from the grid file's folder

    def __init__(
        self,
        *,
        root: str,
        image_size: Annotated[int, Field(ge=16)] = 224,
        val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15,
        test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2,
        split_seed: Annotated[int, Field(ge=0)] = 0,
        block_tiles: Annotated[int, Field(ge=1)] = 8,
        groups: dict[str, list[int]] | None = None,
        scale: Scale = "dtype",
    ):
        problem = scale_problem(scale)
        if problem is not None:
            raise ComponentParamsError([("scale", problem)])
        self.root = root
        self.image_size = image_size
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = split_seed
        self.block_tiles = block_tiles
        self.groups = groups
        self.scale = normal_scale(scale)
        self._cache: dict = {}

    # -- the contract --------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(class_mapping(self.groups))

    @property
    def image_bands(self) -> Bands:
        """The tiles' bands as ``prepare`` recorded them (``Bands.rgb3()`` for PNG tiles of RGB imagery)."""
        self.check()
        return self._bands()

    def _bands(self) -> Bands:
        recorded = self._table()[1].get("bands")
        if recorded is None:
            return Bands.rgb3()
        return Bands(tuple(recorded["names"]), tuple(recorded["composite"]))

    def params(self) -> dict:
        """The parameters; ``scale`` only where not ``dtype``, so RGB folders keep their fingerprints."""
        out = {"root": str(self.root), "image_size": self.image_size, "val_fraction": self.val_fraction,
               "test_fraction": self.test_fraction, "split_seed": self.split_seed,
               "block_tiles": self.block_tiles, "groups": self.groups}
        if self.scale != "dtype":
            out["scale"] = self.scale
        return out

    def __repr__(self) -> str:
        return f"LcdbWaikatoDataset({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def check(self) -> None:
        """Raise ``UserError`` unless ``root`` holds a finished preparation with at least one tile."""
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise UserError(f"lcdb-waikato root {root} {'is a file' if root.exists() else 'does not exist'}; "
                            f"{PREPARE_HINT}")
        if not (root / "labels.csv").is_file():
            raise UserError(f"lcdb-waikato root {root} has no labels.csv (not prepared, or preparation was "
                            f"interrupted); {PREPARE_HINT}")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(f"val_fraction + test_fraction must be below 1, got "
                            f"{self.val_fraction} + {self.test_fraction}")
        class_mapping(self.groups)
        self._ranges()
        if not self._table()[0]:
            raise UserError(f"{root / 'labels.csv'} lists no tiles: no tile met min_coverage or all touched "
                            f"no-data (see {root / 'prepare.json'}); prepare again with other imagery or "
                            "a lower --min-coverage")

    def fingerprint(self) -> str:
        """sha256 of the parameters (not ``root``), labels.csv, prepare.json and the split assignment."""
        self.check()
        root = Path(self.root).expanduser()
        params = {k: v for k, v in self.params().items() if k != "root"}
        params["groups"] = {k: list(v) for k, v in class_mapping(self.groups).items()}
        assignment = self._assignment()[0]
        content = {
            "dataset": "lcdb-waikato", "format": FORMAT_VERSION, "params": params,
            "labels": _sha256(root / "labels.csv"), "prepared": _sha256(root / "prepare.json"),
            "splits": hashlib.sha256(json.dumps(sorted(assignment.items())).encode()).hexdigest(),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        if name not in self._cache:
            self.check()
            assignment = self._write_splits()
            self._cache[name] = [self._load(row, label, codes) for row, label, codes in self._labelled()
                                 if assignment[row["tile_id"]] == name]
        return list(self._cache[name])

    def georeference(self, name: str) -> dict[str, tuple[str, tuple[float, float, float, float]]]:
        """Tile id → (CRS, (x_min, y_min, x_max, y_max)) of the tiles of split ``name``, from labels.csv,
        for ``xaibench export``."""
        rows, _ = self._table()
        assignment = self._write_splits()
        return {row["tile_id"]: (row["crs"], tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
                for row in rows if assignment.get(row["tile_id"]) == name}

    def describe(self) -> dict:
        """Counts per super-class and per source raster, spatial blocks, and the preparation's settings."""
        self.check()
        rows, meta = self._table()
        labelled = self._labelled()
        per_class = np.bincount([label for _, label, _ in labelled], minlength=len(self.classes))
        sources: dict[str, int] = {}
        for row, _, _ in labelled:
            sources[row["source"]] = sources.get(row["source"], 0) + 1
        return {
            "root": str(Path(self.root).expanduser()), "tiles": len(labelled),
            "per_class": dict(zip(self.classes, per_class.tolist())), "sources": sources,
            "blocks": len(set(self._blocks(rows).values())), "dropped_by_groups": len(rows) - len(labelled),
            "bands": self.image_bands.describe(),
            **{k: meta.get(k) for k in ("tile_size", "class_field", "min_coverage", "skipped")},
        }

    # -- reading -------------------------------------------------------------------------------------------
    def _table(self) -> tuple[list[dict], dict]:
        """labels.csv rows and prepare.json, read once."""
        if "table" not in self._cache:
            root = Path(self.root).expanduser()
            with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise UserError(f"{root / 'labels.csv'} lacks columns {', '.join(missing)}; it was not "
                                    f"written by this version: prepare it again ({PREPARE_HINT})")
                rows = list(reader)
            try:
                meta = json.loads((root / "prepare.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise UserError(f"{root / 'prepare.json'} is missing or unreadable; {PREPARE_HINT}") from None
            self._cache["table"] = (rows, meta)
        return self._cache["table"]

    def _labelled(self) -> list[tuple[dict, int, tuple[int, ...] | None]]:
        """(row, label, codes) of every tile a super-class covers to ``min_coverage``; ``codes`` is None
        where the prepared mask is the label's (same grouping), else the label's codes to mask with."""
        if "labelled" not in self._cache:
            rows, meta = self._table()
            mapping = class_mapping(self.groups)
            same = {k: list(v) for k, v in mapping.items()} == meta["groups"]
            lookup = class_lookup(mapping)
            labelled = []
            for row in rows:
                counts = [tuple(map(int, item.split(":"))) for item in row["class_pixels"].split()]
                group_pixels = np.zeros(len(mapping), np.int64)
                for code, count in counts:
                    if lookup[code] >= 0:
                        group_pixels[lookup[code]] += count
                best = int(np.argmax(group_pixels))
                least = meta["min_coverage"] * int(row["width"]) * int(row["height"])  # as prepare compares
                if group_pixels[best] and group_pixels[best] >= least:
                    labelled.append((row, best, None if same else tuple(mapping.values())[best]))
            self._cache["labelled"] = labelled
        return self._cache["labelled"]

    def _ranges(self) -> tuple[tuple[float, float], ...] | None:
        """The (low, high) of each band ``scale`` gives (None: by dtype), or ``UserError`` where it does not fit
        the prepared bands (a pair too many, signed integers without a range)."""
        if "ranges" not in self._cache:
            bands, recorded = self._bands(), self._table()[1].get("bands") or {"dtype": "uint8"}
            try:
                ranges = scale_ranges(self.scale, bands.count)
            except ValueError as exc:
                raise UserError(f"scale: {exc}; the tiles of {self.root} have {bands.describe()}") from None
            if ranges is None:  # signed integers have no range to scale by: scale_bands says so before any is read
                scale_bands(np.zeros((0, 0, bands.count), recorded["dtype"]), None, None, f"the tiles of {self.root}")
            self._cache["ranges"] = ranges
        return self._cache["ranges"]

    def _load(self, row: dict, label: int, codes: tuple[int, ...] | None) -> Sample:
        """A tile's sample: its image read as ``read_bands`` reads it (a PNG as RGB, a GeoTIFF band by band),
        scaled (``scale_bands``) and resized band by band, bilinear (``resize_bands``: a PNG's pixels are
        those of an RGB resize); its mask resized bilinear and thresholded at 128."""
        from PIL import Image

        root = Path(self.root).expanduser()
        size = (self.image_size, self.image_size)
        path = root / row["image"]
        every = None if path.suffix.lower() == ".png" else range(1, self._bands().count + 1)
        try:
            pixels, nodata, _ = read_bands(path, every)
        except UserError as exc:
            raise UserError(f"tile {row['tile_id']}: {exc}; or prepare it again ({PREPARE_HINT})") from None
        image = resize_bands(scale_bands(pixels, nodata, self._ranges(), path), size)
        try:
            with Image.open(root / (row["mask"] if codes is None else row["codes"])) as grey:
                grey.load()
        except OSError as exc:
            raise UserError(f"cannot read tile {row['tile_id']} of {root}: {exc}; {PREPARE_HINT}") from None
        if codes is not None:
            grey = Image.fromarray((np.isin(np.asarray(grey), codes) * 255).astype(np.uint8))
        if grey.size != size:
            grey = grey.resize(size, Image.Resampling.BILINEAR)
        return Sample(row["tile_id"], image, label, np.asarray(grey) >= 128)

    # -- splits --------------------------------------------------------------------------------------------
    def _blocks(self, rows: list[dict]) -> dict[str, str]:
        """Tile id -> spatial block: CRS and the cell of a ``block_tiles``-tile grid holding its centre."""
        blocks = {}
        for row in rows:
            x_min, y_min, x_max, y_max = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            side_x, side_y = self.block_tiles * (x_max - x_min), self.block_tiles * (y_max - y_min)
            column = int(np.floor((x_min + x_max) / 2 / side_x))
            line = int(np.floor((y_min + y_max) / 2 / side_y))
            blocks[row["tile_id"]] = f"{row['crs']}/{column}/{line}"
        return blocks

    def _split_key(self) -> str:
        """Names the assignment's inputs (labels, split parameters, the split method): rows of splits.csv
        under another key are stale, and the whole file is generated again."""
        content = {"labels": _sha256(Path(self.root).expanduser() / "labels.csv"), "seed": self.split_seed,
                   "val": self.val_fraction, "test": self.test_fraction, "block_tiles": self.block_tiles,
                   "method": SPLIT_METHOD}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def _assignment(self) -> tuple[dict[str, str], dict[str, str], str, bool]:
        """(tile id -> split, tile id -> block, split key, whether splits.csv already holds exactly this)."""
        if "assignment" in self._cache:
            return self._cache["assignment"]
        rows, meta = self._table()
        key = self._split_key()
        path = Path(self.root).expanduser() / "splits.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                saved = list(csv.DictReader(handle))
            ids = {row["tile_id"] for row in rows}
            if (saved and all(r.get("split_key") == key and r.get("split") in SPLITS for r in saved)
                    and {r["tile_id"] for r in saved} == ids and len(saved) == len(ids)):
                splits = {r["tile_id"]: r["split"] for r in saved}
                self._cache["assignment"] = (splits, {r["tile_id"]: r["block"] for r in saved}, key, True)
                return self._cache["assignment"]
        blocks = self._blocks(rows)
        names = list(meta["groups"])
        block_counts: dict[str, Counter] = defaultdict(Counter)
        for row in rows:  # stratified by the prepared labels, whatever ``groups`` says
            stratum = names.index(row["super_class"]) if row["super_class"] in names else len(names)
            block_counts[blocks[row["tile_id"]]][stratum] += 1
        fractions = {"train": 1.0 - self.val_fraction - self.test_fraction, "val": self.val_fraction,
                     "test": self.test_fraction}
        block_split = grouped_stratified_split(block_counts, fractions, self.split_seed)
        assignment = {tid: block_split[block] for tid, block in blocks.items()}
        for needed in ("train", "test"):
            if needed not in assignment.values():
                raise UserError(
                    f"{len(block_counts)} spatial block(s) of {self.block_tiles}x{self.block_tiles} tiles are too "
                    f"few to give the {needed} split any tiles; lower block_tiles or prepare more imagery"
                )
        self._cache["assignment"] = (assignment, blocks, key, False)
        return self._cache["assignment"]

    def _write_splits(self) -> dict[str, str]:
        assignment, blocks, key, saved = self._assignment()
        if not saved:
            rows = [{"tile_id": tid, "block": blocks[tid], "split": split, "split_key": key}
                    for tid, split in assignment.items()]
            path = Path(self.root).expanduser() / "splits.csv"
            try:
                atomic_write_text(path, csv_text(SPLIT_COLUMNS, rows))
            except OSError as exc:  # a read-only dataset folder: the split is deterministic anyway
                warnings.warn(f"lcdb-waikato: cannot write {path} ({exc}); the split is used without it")
            self._cache["assignment"] = (assignment, blocks, key, True)
        return assignment


@hookimpl
def register_datasets(register):
    register("lcdb-waikato", LcdbWaikatoDataset)
