"""Preparing the ``lcdb-waikato`` dataset: GeoTIFFs and LCDB v5 polygons cut into labelled tiles.

``prepare`` needs the geo extra (rasterio, geopandas, pyogrio, shapely, pyproj), imported only when it
runs; the dataset (``lcdb_waikato``) reads what it writes from 8-bit RGB imagery with Pillow alone, and
needs rasterio only for the GeoTIFF tiles of other imagery.

Bands: every band of the imagery but alpha is kept, in the file's order, of any integer or float type
(8-bit RGB aerials, 4-band 16-bit red, green, blue, near-infrared, float reflectance). A band flagged alpha,
and the unflagged fourth band of 4-band 8-bit imagery (LINZ's RGBA aerials), is coverage, not an image
band: a tile where it is 0 is skipped. (So 4-band 8-bit red, green, blue, near-infrared imagery keeps its
fourth band only where that band's colour interpretation is set, e.g. ``gdal_edit.py -colorinterp_4
gray``, or stored as 16-bit.) The colour composite is the bands whose colour interpretation is red, green
and blue, else the first three kept (the first as grey where fewer are kept); band names are the files'
band descriptions, else their colour interpretations, else ``band N``
(``xaibench.kit.rasters.default_band_names``). Every raster of one preparation has the same bands. A tile
whose pixels are no data in some bands only is kept; the dataset sets those values to 0.

Preparation, per raster and per ``tile_size`` square (the ragged right and bottom edges are left out):

- polygons of ``class_field`` are read inside the raster's bounds only, class 0 ("Not land") and codes in
  no super-class are dropped, the rest are reprojected to the raster's CRS and burnt, by class code, into
  one strip of tiles at a time (a pixel belongs to a polygon when its centre is inside);
- a tile's super-class coverage is the share of its pixels whose code is in that super-class; the tile is
  labelled with the dominant super-class (ties: the first in mapping order) if that share is at least
  ``min_coverage``, and skipped otherwise;
- a tile touching no-data anywhere (alpha 0, the nodata value in every band, or the raster's mask) is
  skipped; the imagery is read one tile window at a time, never a whole raster.

The prepared folder::

    images/<tile>.png   RGB uint8, tile_size square (8-bit imagery of three bands but alpha, as always)
    images/<tile>.tif   other imagery: a GeoTIFF of every kept band, the imagery's dtype and no-data
                        value, the tile's CRS and transform, the band names as descriptions
    masks/<tile>.png    L, 255 where the label's super-class polygons are, 0 elsewhere
    codes/<tile>.png    L, the LCDB class code of each pixel (0: no kept polygon), to regroup classes later
    prepare.json        the parameters, sources and skip counts of the preparation; for GeoTIFF tiles also
                        ``bands``: names, composite (0-based positions of red, green, blue), dtype and
                        source_bands (the 1-based band numbers of the imagery kept); absent: RGB uint8
    labels.csv          one row per tile (``LABEL_COLUMNS``), written last: it lists only finished tiles
    splits.csv          written by the dataset on first load: tile, spatial block, split, split key
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.errors import UserError
from xaibench.kit.files import atomic_write_text
from xaibench.kit.rasters import band_info, default_band_names

# LCDB v5 mainland classes grouped into seven super-classes. Codes 80 and 81 (Chatham Islands only) and 0
# ("Not land") are in none, so their polygons are dropped. Pass ``groups`` to use another grouping.
DEFAULT_GROUPS: dict[str, tuple[int, ...]] = {
    "artificial": (1, 2, 5, 6),
    "bare": (10, 12, 14, 15, 16),
    "water": (20, 21, 22),
    "cropland": (30, 33),
    "grassland": (40, 41, 43, 44, 45, 46, 47),
    "scrub": (50, 51, 52, 54, 55, 56, 58),
    "forest": (64, 68, 69, 70, 71),
}

FORMAT_VERSION = 1  # of the prepared folder; part of the fingerprint
LABEL_COLUMNS = [
    "tile_id", "image", "mask", "codes", "source", "col", "row", "width", "height", "crs",
    "x_min", "y_min", "x_max", "y_max", "super_class", "coverage", "class_codes", "class_pixels",
]


def class_mapping(groups) -> dict[str, tuple[int, ...]]:
    """``groups`` (or the default) checked: named groups of distinct class codes 1-255."""
    if groups is None:
        return dict(DEFAULT_GROUPS)
    if not groups:
        raise UserError("groups must name at least one super-class, e.g. {forest: [64, 68, 69, 70, 71]}")
    mapping, owner = {}, {}
    for name, codes in groups.items():
        if not codes:
            raise UserError(f"groups: super-class {name!r} lists no class codes")
        for code in codes:
            if code == 0:
                raise UserError(f"groups: {name!r} lists class 0 ('Not land'), which is always dropped")
            if not 1 <= int(code) <= 255:
                raise UserError(f"groups: {name!r} lists class code {code}; LCDB codes are 1 to 255")
            if code in owner:
                raise UserError(f"groups: class code {code} is in both {owner[code]!r} and {name!r}")
            owner[code] = name
        mapping[str(name)] = tuple(sorted(int(c) for c in codes))
    return mapping


def class_lookup(mapping: dict[str, tuple[int, ...]]) -> np.ndarray:
    """int64 (256,): the index of each class code's super-class in ``mapping``, -1 for codes in none."""
    lookup = np.full(256, -1, np.int64)
    for index, codes in enumerate(mapping.values()):
        lookup[list(codes)] = index
    return lookup


def csv_text(columns: list[str], rows: list[dict]) -> str:
    """CSV text of ``rows`` (dicts keyed by ``columns``) under a header line, ``\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# -- preparation -------------------------------------------------------------------------------------------


def _import_geo():
    """(rasterio, pyogrio), after checking every geo library ``prepare`` uses can be imported."""
    try:
        # geopandas: pyogrio.read_dataframe returns a GeoDataFrame; pyproj: its CRS handling; shapely: below.
        for name in ("geopandas", "pyproj", "shapely"):
            importlib.import_module(name)
        import pyogrio
        import rasterio
        import rasterio.features
        import rasterio.warp
        import rasterio.windows
    except ImportError as exc:
        raise UserError(
            f"preparing lcdb-waikato needs the geo libraries, which are missing ({exc}); "
            "install the geo extra: pip install 'xaibench[geo]'"
        ) from None
    return rasterio, pyogrio


def _imagery_files(imagery) -> list[tuple[Path, str]]:
    """(path, source name) of every GeoTIFF: a folder's *.tif/*.tiff (recursively, sorted) or given files."""
    items = [imagery] if isinstance(imagery, (str, os.PathLike)) else list(imagery)
    if not items:
        raise UserError("no imagery given: pass a folder of GeoTIFFs or a list of .tif/.tiff files")
    files, missing = [], []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".tif", ".tiff") and p.is_file())
            if not found:
                raise UserError(f"imagery folder {path} holds no .tif or .tiff files")
            files += [(p, p.relative_to(path).as_posix()) for p in found]
        elif path.is_file():
            files.append((path, path.as_posix()))
        else:
            missing.append(str(path))
    if missing:
        raise UserError(f"imagery not found: {', '.join(missing)}; pass a folder of GeoTIFFs or existing files")
    return files


def _tile_prefixes(files: list[tuple[Path, str]]) -> list[str]:
    """A file-name-safe prefix per raster for tile ids: the file stem, or the whole source if stems repeat."""
    stems = [path.stem for path, _ in files]
    if len(set(stems)) == len(stems):
        return stems
    return [re.sub(r"[^A-Za-z0-9_.-]+", "_", source.rsplit(".", 1)[0]).strip("_.") for _, source in files]


def _raster_layout(rasterio, path: Path) -> dict:
    """Bands, CRS and size of one GeoTIFF, or a UserError saying why it cannot be tiled.

    ``indexes``: the 1-based bands read into a tile, in order (for a PNG tile: red, green, blue);
    ``alpha``: the numbers of the alpha bands (coverage: a tile where one is 0 is skipped); ``png``:
    whether tiles are RGB PNGs (8-bit imagery of three bands but alpha); ``bands``: the tiles' names,
    composite and dtype, and the imagery's bands they hold."""
    from rasterio.enums import ColorInterp

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise UserError(f"cannot read {path} as a GeoTIFF: {exc}") from None
    with src:
        if src.crs is None:
            raise UserError(f"{path} has no coordinate reference system; LINZ imagery is EPSG:2193")
        info = band_info(path)  # every band's type, descriptions and colour interpretation
        if info.colour == ("red", "green", "blue") and src.colorinterp == (ColorInterp.palette,):
            raise UserError(f"{path} is palette imagery; expand it to RGB first (gdal_translate -expand rgb)")
        interp = list(src.colorinterp)
        # Alpha bands are checked explicitly: GDAL's dataset mask holds a flagged one only in 2- and 4-band
        # imagery, and the unflagged 4th band of 4-band 8-bit imagery (LINZ's RGBA aerials) is alpha too.
        alpha = [b for b in range(1, src.count + 1) if b not in info.image_bands]
        if info.dtype == "uint8" and src.count == 4 and interp[3] == ColorInterp.undefined:
            alpha.append(4)
        kept = [b for b in info.image_bands if b not in alpha]
        if not kept:
            raise UserError(f"{path} has no band but alpha; expected imagery bands (red, green, blue, ...)")
        colours = [info.colour[b - 1] for b in kept]
        rgb = ([kept[colours.index(c)] for c in ("red", "green", "blue")] if {"red", "green", "blue"} <= set(colours)
               else kept[:3] if len(kept) >= 3 else [kept[0]] * 3)
        png = info.dtype == "uint8" and len(kept) == 3
        if png:  # as before bands were kept: the tile's channels are red, green, blue
            indexes, names, composite = rgb, ["red", "green", "blue"], [0, 1, 2]
        else:
            indexes, names, composite = kept, default_band_names(info, kept), [kept.index(b) for b in rgb]
        return {"indexes": indexes, "alpha": alpha, "png": png, "crs": src.crs.to_string(), "width": src.width,
                "height": src.height, "count": src.count, "nodata": src.nodata,
                "bands": {"names": names, "composite": composite, "dtype": info.dtype, "source_bands": indexes}}


def _same_bands(files: list[tuple[Path, str]], layouts: list[dict]) -> None:
    """UserError naming the first raster whose tiles would have other bands than the first raster's."""
    first = layouts[0]["bands"]
    for (path, _), layout in zip(files, layouts):
        mine = layout["bands"]
        if any(mine[k] != first[k] for k in ("names", "composite", "dtype")):
            raise UserError(
                f"{path} has bands {', '.join(mine['names'])} ({mine['dtype']}) but {files[0][0]} has "
                f"{', '.join(first['names'])} ({first['dtype']}); one preparation's rasters have the same bands: "
                f"prepare them apart")


def _lcdb_layer(pyogrio, path: Path, class_field: str) -> tuple[str, object]:
    """The layer of ``path`` holding ``class_field``, and its CRS; a UserError listing fields otherwise."""
    if not path.exists():
        raise UserError(f"LCDB file not found: {path}; pass the LCDB v5 GeoPackage (.gpkg) or shapefile (.shp)")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
        infos = {layer: pyogrio.read_info(path, layer=layer) for layer in layers}
    except Exception as exc:  # pyogrio raises its own DataSourceError family, and GDAL errors
        raise UserError(f"cannot read {path} as a vector file: {exc}") from None
    for layer, info in infos.items():
        fields = list(info["fields"])
        if class_field not in fields:
            continue
        if np.dtype(info["dtypes"][fields.index(class_field)]).kind not in "iuf":
            raise UserError(
                f"field {class_field!r} of {path} holds text, not class codes; pass a code field such as "
                f"{', '.join(f for f in fields if f.startswith('Class_')) or 'Class_2018'}"
            )
        if info["crs"] is None:
            raise UserError(f"{path} has no coordinate reference system; LCDB v5 is EPSG:2193")
        return layer, info["crs"]
    fields = ", ".join(str(f) for f in infos[layers[0]]["fields"]) if layers else "(no layers)"
    raise UserError(f"{path} has no field {class_field!r}; its fields are: {fields}. "
                    "Pass another class_field (--class-field), e.g. Class_2012")


def _polygons(pyogrio, lcdb_path: Path, layer: str, lcdb_crs, class_field: str, kept_codes: list[int], src):
    """The LCDB polygons over raster ``src`` whose code is in ``kept_codes``, in the raster's CRS:
    (object array of shapely geometries, int array of their codes)."""
    from rasterio.warp import transform_bounds

    bbox = transform_bounds(src.crs, lcdb_crs, *src.bounds, densify_pts=21)
    frame = pyogrio.read_dataframe(lcdb_path, layer=layer, columns=[class_field], bbox=bbox)
    codes = np.asarray(frame[class_field].to_numpy(dtype=float, na_value=-1))
    keep = np.isin(codes, kept_codes) & frame.geometry.notna().to_numpy()
    frame = frame[keep]
    if len(frame) and not frame.crs.equals(src.crs.to_wkt()):
        frame = frame.to_crs(src.crs.to_wkt())
    return np.asarray(frame.geometry.array, dtype=object), codes[keep].astype(int)


def _labelled_tiles(src, layout: dict, shapes, codes, size: int, lookup, min_coverage: float, skipped, bar):
    """Yield ``(window, tile_codes, pixels, best)`` for every tile of ``src`` worth keeping.

    ``tile_codes``: uint8 (size, size) class code per pixel; ``pixels``: int64 (256,) pixel count per code;
    ``best``: the dominant super-class's index. Counts the other tiles in ``skipped`` by reason. Polygons are
    burnt one strip of tiles at a time; pixels are read only for tiles whose land cover qualifies."""
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import bounds as window_bounds

    tree = shapely.STRtree(shapes)
    kept_codes = np.flatnonzero(lookup >= 0)
    columns = src.width // size
    for tile_row in range(src.height // size):
        strip = Window(0, tile_row * size, columns * size, size)
        hits = tree.query(shapely.box(*window_bounds(strip, src.transform)))
        if len(hits) == 0:
            skipped["uncovered"] += columns
            bar.update(columns)
            continue
        cover = rasterize(zip(shapes[hits], codes[hits].tolist()), out_shape=(size, columns * size),
                          transform=src.window_transform(strip), fill=0, dtype="uint8")
        for tile_col in range(columns):
            bar.update(1)
            tile_codes = np.ascontiguousarray(cover[:, tile_col * size:(tile_col + 1) * size])
            pixels = np.bincount(tile_codes.ravel(), minlength=256)
            group_pixels = np.bincount(lookup[kept_codes], pixels[kept_codes], lookup.max() + 1)
            best = int(np.argmax(group_pixels))  # the first of equals: mapping order breaks ties
            if group_pixels[best] == 0:
                skipped["uncovered"] += 1
                continue
            if group_pixels[best] < min_coverage * size * size:  # as the dataset compares
                skipped["low_coverage"] += 1
                continue
            window = Window(tile_col * size, tile_row * size, size, size)
            if not src.dataset_mask(window=window).all() or (
                layout["alpha"] and not src.read(layout["alpha"], window=window).all()
            ):
                skipped["nodata"] += 1
                continue
            yield window, tile_codes, pixels, best


def _write_tile(rasterio, path: Path, pixels: np.ndarray, transform, layout: dict) -> None:
    """A GeoTIFF tile of ``pixels`` (bands, size, size): the imagery's dtype and no-data value, the tile's
    CRS and transform, the band names as descriptions, deflate-compressed (lossless). Photometric
    MINISBLACK: GDAL would otherwise take the 4th band of 8-bit tiles for alpha."""
    count, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=pixels.dtype,
                       crs=layout["crs"], transform=transform, nodata=layout["nodata"], compress="deflate",
                       photometric="MINISBLACK") as dst:
        dst.write(pixels)
        dst.descriptions = tuple(layout["bands"]["names"])


def prepare(
    *,
    imagery: str | list[str],
    lcdb: str,
    out: str,
    tile_size: Annotated[int, Field(ge=8)] = 224,
    class_field: str = "Class_2018",
    min_coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5,
    groups: dict[str, list[int]] | None = None,
    progress: bool = True,
) -> Path:
    """Cut ``imagery`` into labelled tiles under ``out`` and return ``out`` (see the module docstring).

    ``imagery``: a folder (every .tif/.tiff in it, recursively) or a list of GeoTIFFs of the same bands,
    any CRS: 8-bit RGB or RGBA (PNG tiles, as always), or any other bands, 8-/16-bit or float (GeoTIFF
    tiles of every band but alpha). ``lcdb``: the LCDB GeoPackage or shapefile, any CRS. ``tile_size`` in
    pixels. ``class_field``: the LCDB field of class codes (``Class_2018``, ``Class_2012``, ...).
    ``min_coverage`` in (0, 1]: the least share of a tile its super-class must cover. ``groups``: super-class
    name to LCDB codes (default ``DEFAULT_GROUPS``). Raises ``UserError`` for missing files or libraries, a
    wrong field or unreadable rasters, before writing anything."""
    rasterio, pyogrio = _import_geo()
    from PIL import Image
    from rasterio.windows import bounds as window_bounds
    from tqdm.auto import tqdm

    if int(tile_size) < 8:
        raise UserError(f"tile_size must be at least 8 pixels, got {tile_size}")
    min_coverage = float(min_coverage)
    if not 0 < min_coverage <= 1:
        raise UserError(f"min_coverage must be in (0, 1], got {min_coverage}")
    mapping = class_mapping(groups)
    files = _imagery_files(imagery)
    layouts = [_raster_layout(rasterio, path) for path, _ in files]
    _same_bands(files, layouts)
    lcdb_path = Path(lcdb).expanduser()
    layer, lcdb_crs = _lcdb_layer(pyogrio, lcdb_path, class_field)
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out {out_dir} is a file; pass a folder")

    size = int(tile_size)
    lookup = class_lookup(mapping)
    kept_codes = sorted(np.flatnonzero(lookup >= 0).tolist())
    names = list(mapping)

    # Old labels would claim tiles about to be overwritten; a crash from here on leaves no labels.csv.
    for name in ("images", "masks", "codes"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for name in ("labels.csv", "splits.csv"):
        (out_dir / name).unlink(missing_ok=True)

    rows: list[dict] = []
    skipped = {"nodata": 0, "low_coverage": 0, "uncovered": 0}
    total = sum((lay["height"] // size) * (lay["width"] // size) for lay in layouts)
    bar = tqdm(total=total, desc="lcdb-waikato tiles", unit="tile", disable=not progress, dynamic_ncols=True)
    with bar:
        for (path, source), prefix, layout in zip(files, _tile_prefixes(files), layouts):
            with rasterio.open(path) as src:
                shapes, codes = _polygons(pyogrio, lcdb_path, layer, lcdb_crs, class_field, kept_codes, src)
                for window, tile_codes, pixels, best in _labelled_tiles(
                    src, layout, shapes, codes, size, lookup, min_coverage, skipped, bar
                ):
                    tile = src.read(layout["indexes"], window=window)
                    mask = (lookup[tile_codes] == best).astype(np.uint8) * 255
                    tile_id = f"{prefix}_r{window.row_off:06d}_c{window.col_off:06d}"
                    image = f"images/{tile_id}.{'png' if layout['png'] else 'tif'}"
                    if layout["png"]:
                        Image.fromarray(np.ascontiguousarray(np.moveaxis(tile, 0, -1))).save(out_dir / image)
                    else:
                        _write_tile(rasterio, out_dir / image, tile, src.window_transform(window), layout)
                    Image.fromarray(mask).save(out_dir / "masks" / f"{tile_id}.png")
                    Image.fromarray(tile_codes).save(out_dir / "codes" / f"{tile_id}.png")
                    present = [c for c in kept_codes if pixels[c]]
                    x_min, y_min, x_max, y_max = window_bounds(window, src.transform)
                    covered = sum(int(pixels[c]) for c in mapping[names[best]])
                    rows.append({
                        "tile_id": tile_id, "image": image, "mask": f"masks/{tile_id}.png",
                        "codes": f"codes/{tile_id}.png", "source": source, "col": window.col_off,
                        "row": window.row_off, "width": size, "height": size, "crs": layout["crs"],
                        "x_min": round(x_min, 6), "y_min": round(y_min, 6), "x_max": round(x_max, 6),
                        "y_max": round(y_max, 6), "super_class": names[best],
                        "coverage": round(covered / (size * size), 6),
                        "class_codes": " ".join(map(str, present)),
                        "class_pixels": " ".join(f"{c}:{pixels[c]}" for c in present),
                    })

    def file_facts(path: Path) -> dict:
        stat = path.stat()
        return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    meta = {
        "format": FORMAT_VERSION, "tile_size": size, "class_field": class_field,
        "min_coverage": float(min_coverage), "groups": {k: list(v) for k, v in mapping.items()},
        "lcdb": {**file_facts(lcdb_path), "layer": layer},
        "imagery": [
            {"source": source, **file_facts(path), **{k: layout[k] for k in ("crs", "width", "height")},
             "bands": layout["count"]}
            for (path, source), layout in zip(files, layouts)
        ],
        "tiles": len(rows), "skipped": skipped,
    }
    if not layouts[0]["png"]:  # absent, the tiles are RGB PNGs: prepared folders of 8-bit RGB stay as they were
        meta["bands"] = layouts[0]["bands"]
    atomic_write_text(out_dir / "prepare.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(out_dir / "labels.csv", csv_text(LABEL_COLUMNS, rows))  # last: it vouches for the tiles
    if progress:
        print(f"lcdb-waikato: {len(rows)} tiles from {len(files)} raster(s); skipped {skipped['nodata']} "
              f"touching no-data, {skipped['low_coverage']} below min_coverage, {skipped['uncovered']} "
              f"without land cover; labels: {out_dir / 'labels.csv'}", file=sys.stderr)
    return out_dir
