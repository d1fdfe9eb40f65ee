"""``xaibench export``: a run's segmentations, a loop round's accepted annotations, or saliency maps, as
files a GIS opens, in the tiles' own coordinates.

- ``segmentations`` (``gpkg`` or ``geojson``): per chosen cell with a segmenter, one feature per test tile:
  the segmentation's polygons (a MultiPolygon) with the tile's id and class (the explained, true class),
  the cell's dataset, mask, ensemble, seed, explainer, seeder and segmenter, and ``score``, the
  segmentation's IoU against the ground truth.
- ``annotations`` (``gpkg`` or ``geojson``): the training annotations after round ``--round`` of each loop
  chain, one feature per annotated training tile, with the acceptor, the round and ``score`` (IoU against
  the reference annotation).
- ``saliency`` (``geotiff``): one float32 GeoTIFF per chosen cell and explained test tile, in a folder: a
  folder per cell, a file per tile named for its id made shell-safe (``tile_names``); ids that reduce to the
  same name (``ü.png`` and ``é.png``, ``x y.png`` and ``x_y.png``, names differing only in case) get a short
  hash of the id appended, and every file holds its tile's id in the GeoTIFF tag ``tile``.

Where the dataset names each tile's CRS and bounds (an optional ``georeference(split)``; ``lcdb-waikato``
has one), geometries are in that CRS (a GeoPackage holds one CRS: tiles in others are reprojected to the
first's; GeoJSON is written in WGS 84, as RFC 7946 asks); elsewhere in pixel coordinates (x = column,
y = row), which the summary says. Needs the geo extra (rasterio, shapely, geopandas, pyogrio).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from xaibench.commands.outputs import output_file, output_folder
from xaibench.errors import UserError
from xaibench.kit.contracts import capability
from xaibench.kit.registry import get_registry
from xaibench.pipeline import metrics
from xaibench.pipeline.artifacts import Artifacts, segmentations
from xaibench.pipeline.plan import plan_loop, plan_run
from xaibench.pipeline.records import CELL_LABELS, component_name
from xaibench.pipeline.store import cell_file, load_arrays
from xaibench.text import slug

WHAT = {"segmentations": ("gpkg", "geojson"), "annotations": ("gpkg", "geojson"), "saliency": ("geotiff",)}
DRIVERS = {"gpkg": "GPKG", "geojson": "GeoJSON"}


def _geo():
    try:
        import geopandas
        import rasterio
        import shapely
    except ImportError as exc:
        raise UserError(f"xaibench export needs the geo extra ({exc.name} is missing): pip install "
                        f"'xaibench[geo]'") from None
    return geopandas, rasterio, shapely


def parse_filter(text: str | None) -> dict[str, str]:
    """``"mask=white,seeder=top-k"`` → ``{"mask": "white", "seeder": "top-k"}``; keys are label columns."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in CELL_LABELS + ("acceptor",):
            raise UserError(f"--cell {text!r}: write KEY=VALUE[,KEY=VALUE...] with keys among "
                            f"{', '.join(CELL_LABELS + ('acceptor',))}")
        if key in out:  # the last one would silently win
            raise UserError(f"--cell {text!r}: {key} is given twice; give each key once")
        out[key] = value
    return out


@contextlib.contextmanager
def _reading(run_dir: Path, what: str):
    """A run-folder file that cannot be read back (truncated, overwritten) is a ``UserError`` saying how to
    mend it: a rerun checks every artifact against its record and computes damaged ones again."""
    try:
        yield
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{what} in {run_dir} cannot be read back ({type(exc).__name__}: {exc}); run the same "
                        f"'xaibench run' (or 'loop') on {run_dir} again: it recomputes damaged files") from None


def _matches(labels: dict, wanted: dict[str, str]) -> bool:
    """A label matches its full text or its component name (``top-k`` matches ``top-k(k=3)``)."""
    return all(str(labels.get(k)) == v or component_name(labels.get(k)) == v for k, v in wanted.items())


class Tiles:
    """Each tile's pixel → map transform and CRS, from the dataset's ``georeference`` or, without one,
    pixel coordinates (CRS None)."""

    def __init__(self, registry, dataset_choice, split: str, height: int, width: int):
        from rasterio.transform import from_bounds

        dataset = registry.create("datasets", dataset_choice.name, **dataset_choice.params)
        georeference = capability(dataset, "georeference", "datasets")
        self.found = georeference(split) if georeference is not None else {}
        self.height, self.width, self._from_bounds = height, width, from_bounds
        self.georeferenced = georeference is not None

    def __call__(self, tile_id: str):
        from affine import Affine

        if tile_id not in self.found:
            return Affine.identity(), None
        crs, bounds = self.found[tile_id]
        return self._from_bounds(*bounds, self.width, self.height), crs


def _polygon(mask: np.ndarray, transform):
    """The union of a bool mask's pixel polygons, in the coordinates ``transform`` maps pixels to."""
    from rasterio.features import shapes
    from shapely.geometry import MultiPolygon, shape
    from shapely.ops import unary_union

    parts = [shape(geometry) for geometry, value in shapes(mask.astype(np.uint8), mask=mask, transform=transform)
             if value == 1]
    union = unary_union(parts)
    return union if union.geom_type == "MultiPolygon" else MultiPolygon([union])


def _features(items) -> list[dict]:
    """Features of ``(tile id, mask, transform, crs, attributes)`` items with a non-empty mask."""
    out = []
    for tile, mask, transform, crs, attributes in items:
        if mask.any():
            out.append({"tile": str(tile), **attributes, "crs": crs, "geometry": _polygon(mask, transform)})
    return out


def _write_vectors(features: list[dict], fmt: str, output: Path, layer: str) -> dict:
    geopandas, _, _ = _geo()
    if not features:
        raise UserError("nothing to export: no chosen cell (or round) has a non-empty mask; check --cell and --round")
    crs_values = list(dict.fromkeys(f["crs"] for f in features))
    frames = []
    for crs in crs_values:
        rows = [{k: v for k, v in f.items() if k != "crs"} for f in features if f["crs"] == crs]
        frames.append(geopandas.GeoDataFrame(rows, geometry="geometry", crs=crs))
    target = crs_values[0]
    if target is not None:
        frames = [f.to_crs(target) if f.crs is not None else f for f in frames]
    frame = geopandas.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=target)
    if fmt == "geojson" and target is not None:
        frame = frame.to_crs("EPSG:4326")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.partial{output.suffix}")  # the driver reads the extension
    tmp.unlink(missing_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".crs. was not provided")  # pixel coordinates: said below
            frame.to_file(tmp, driver=DRIVERS[fmt], engine="pyogrio", **({"layer": layer} if fmt == "gpkg" else {}))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"features": len(frame), "crs": str(frame.crs) if frame.crs is not None else None,
            "coordinates": "map" if target is not None else "pixel (x = column, y = row): the dataset has no "
                                                            "georeference"}


def export(run_dir, *, what: str, fmt: str, output, cell: str | None = None, round_: int | None = None,
           registry=None) -> dict:
    """Write ``what`` of the run folder ``run_dir`` as ``fmt`` to ``output``; returns a summary."""
    run_dir, output = Path(run_dir), Path(output)
    if what not in WHAT:
        raise UserError(f"--what {what!r}: choose {', '.join(WHAT)}")
    if fmt not in WHAT[what]:
        raise UserError(f"--format {fmt!r} does not hold {what}; use {' or '.join(WHAT[what])}")
    wanted = parse_filter(cell)
    grid_path = run_dir / "grid.yaml"
    if not grid_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (it holds no grid.yaml); give the --out of a run")
    if what == "annotations" and round_ is None:
        raise UserError("--what annotations needs --round N (0 is the first round's accepted annotations)")
    if round_ is not None and (what != "annotations" or round_ < 0):
        raise UserError(f"--round {round_}: give --round only with --what annotations, as 0 (the first round) or more")
    # before any work: a folder where the file goes, or a file where the folder goes, is refused now
    if what == "saliency":
        output_folder(output)
    else:
        output_file(output, create_folders=True)
        if output.exists() and not output.is_file():  # GDAL would delete a device (/dev/null) to write a file
            raise UserError(f"--output {output} is a device or a pipe, not a file; export writes a {fmt} file: "
                            f"give a file name")
    _geo()
    registry = registry or get_registry()
    artifacts = Artifacts(run_dir / "cache")
    if what == "annotations":
        return _annotations(grid_path, registry, artifacts, wanted, round_, fmt, output)
    _, plan = plan_run(grid_path, registry)
    chosen = [cp for cp in plan.cells if _matches(cp.labels, wanted)]
    if what == "saliency":
        return _saliency(chosen, registry, artifacts, output)
    items, cells = [], 0
    for cp in chosen:
        if cp.segment is None or not artifacts.exists("segment", cp.segment):
            continue
        with _reading(run_dir, f"the segmentation of cell {cp.cell.cell_id}"):
            test = artifacts.data(cp.data, "test")
            index = artifacts.load("explain", cp.explain)["index"]
            masks = segmentations(artifacts.load("segment", cp.segment), cp.segment_index)
            scores = _cell_scores(run_dir, cp, "seg_iou", len(index))
        tiles = Tiles(registry, cp.cell.dataset, "test", *masks.shape[1:])
        attributes = {k: str(cp.labels[k]) for k in ("dataset", "mask", "ensemble", "explainer", "seeder",
                                                     "segmenter")}
        attributes["seed"] = int(cp.labels["seed"])
        cells += 1
        for position, row in enumerate(index):
            transform, crs = tiles(str(test["ids"][row]))
            items.append((test["ids"][row], masks[position], transform, crs,
                          {"class": str(test["classes"][test["labels"][row]]), **attributes,
                           "acceptor": "", "round": -1, "score": float(scores[position])}))
    if not cells:
        raise UserError("no chosen cell has a finished segmentation: run the grid first, or check --cell")
    return {"what": what, "cells": cells, **_write_vectors(_features(items), fmt, output, what), "output": str(output)}


def _cell_scores(run_dir: Path, cp, name: str, n: int) -> np.ndarray:
    path = cell_file(run_dir, cp.cell.cell_id)
    scores = load_arrays(path).get(name) if path.is_file() else None
    return np.asarray(scores, dtype=np.float64) if scores is not None and len(scores) == n else np.full(n, np.nan)


def _annotations(grid_path, registry, artifacts, wanted, round_: int, fmt: str, output: Path) -> dict:
    planner = plan_loop(grid_path, registry)
    items, chains = [], 0
    for chain in planner.chains:
        labels = planner.labels(chain)
        if not _matches(labels, wanted):
            continue
        annotations = None
        for r in range(round_ + 1):
            rp = planner.round(chain, r, annotations)
            annotations = rp.accept
        if not artifacts.exists("accept", rp.accept):
            raise UserError(f"round {round_} of the loop chain {chain.cell.cell_id} / {chain.acceptor.label} has not "
                            f"run: run 'xaibench loop' with at least {round_ + 1} round(s) first")
        with _reading(artifacts.cache.parent, f"round {round_}'s annotations of chain {chain.cell.cell_id}"):
            train = artifacts.data(rp.data, "train")
            index = np.flatnonzero(train["has_mask"])
            current = artifacts.annotations(rp.data, rp.accept)[index]
        scores = metrics.iou(current, train["references"][index])
        tiles = Tiles(registry, chain.cell.dataset, "train", *current.shape[1:])
        attributes = {**{k: str(labels[k]) for k in ("dataset", "mask", "ensemble", "explainer", "seeder",
                                                     "segmenter", "acceptor")},
                      "seed": int(labels["seed"]), "round": int(round_)}
        chains += 1
        for position, row in enumerate(index):
            transform, crs = tiles(str(train["ids"][row]))
            items.append((train["ids"][row], current[position], transform, crs,
                          {"class": str(train["classes"][train["labels"][row]]), **attributes,
                           "score": float(scores[position])}))
    if not chains:
        raise UserError("no loop chain matches --cell; the chains' labels are listed in loop.csv")
    return {"what": "annotations", "chains": chains, **_write_vectors(_features(items), fmt, output, "annotations"),
            "output": str(output)}


def _saliency(chosen, registry, artifacts, output: Path) -> dict:
    """The GeoTIFFs are written to a temporary folder and moved under ``output`` once all are written, so
    a failure leaves nothing behind."""
    staging = Path(tempfile.mkdtemp(prefix="xaibench-export-"))
    try:
        found = _saliency_tiles(chosen, registry, artifacts, staging)
        output.mkdir(parents=True, exist_ok=True)
        for folder in sorted(staging.iterdir()):
            target = output / folder.name
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(folder), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**found, "output": str(output)}


def _saliency_tiles(chosen, registry, artifacts, output: Path) -> dict:
    _, rasterio, _ = _geo()
    written, georeferenced = 0, True
    for cp in chosen:
        if cp.explain is None or not artifacts.exists("explain", cp.explain):
            continue
        what = f"the explanation of cell {cp.cell.cell_id}"
        with _reading(artifacts.cache.parent, what):
            explained = artifacts.load("explain", cp.explain)
            test = artifacts.data(cp.data, "test")
            maps = explained["maps"]
        tiles = Tiles(registry, cp.cell.dataset, "test", *maps.shape[1:])
        folder = output / slug(cp.cell.cell_id)
        folder.mkdir(parents=True, exist_ok=True)
        names = tile_names([str(test["ids"][row]) for row in explained["index"]])
        for position, row in enumerate(explained["index"]):
            tile = str(test["ids"][row])
            transform, crs = tiles(tile)
            georeferenced &= crs is not None
            with _reading(artifacts.cache.parent, what):
                saliency = np.asarray(maps[position], dtype=np.float32)
            with warnings.catch_warnings():
                # pixel coordinates (no georeference) are said in the summary, not by GDAL for every tile
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(folder / f"{names[tile]}.tif", "w", driver="GTiff", width=saliency.shape[1],
                                   height=saliency.shape[0], count=1, dtype="float32", crs=crs,
                                   transform=transform) as dst:
                    dst.write(saliency[None])
                    dst.update_tags(tile=tile)
            written += 1
    if not written:
        raise UserError("no chosen cell has a finished explanation: run the grid first, or check --cell")
    return {"what": "saliency", "tiles": written,
            "coordinates": "map" if georeferenced else "pixel (x = column, y = row): the dataset has no georeference"}


def tile_names(tiles: list[str]) -> dict[str, str]:
    """Tile id → a file stem unique among ``tiles`` (also on a case-insensitive disk) that a shell needs no
    quotes for: the id's ``slug``, with ``-`` and 8 hex digits of the id's sha1 appended where two ids share
    a slug. Deterministic: a tile's name depends only on the ids exported beside it."""
    stems = {tile: slug(tile) or "tile" for tile in dict.fromkeys(tiles)}
    taken: dict[str, list[str]] = {}
    for tile, stem in stems.items():
        taken.setdefault(stem.casefold(), []).append(tile)
    names = {tile: stem if len(taken[stem.casefold()]) == 1 else f"{stem}-{_short_hash(tile)}"
             for tile, stem in stems.items()}
    if len({name.casefold() for name in names.values()}) != len(names):  # a suffixed name met a plain one
        names = {tile: f"{stem}-{_short_hash(tile)}" for tile, stem in stems.items()}
    return names


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
