"""``data prepare lcdb-waikato`` keeps every band of its imagery, and the ``lcdb-waikato`` dataset reads them.

Fixtures are written here in the real formats: 4-band 16-bit EPSG:2193 GeoTIFFs (red, green, blue,
near-infrared, with a nodata value; one with a flagged alpha band), a float32 reflectance one, an 8-bit RGB
one, and a GeoPackage of LCDB-schema MultiPolygons stored in EPSG:4326. Each raster is 4 x 4 tiles of 32 px
at 0.5 m: forest (69) left of pixel column 64, grassland (40) right of it; the top-left tile is no data.
"""

import csv
import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from xaibench import create
from xaibench.commands import cli
from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Bands, validate_sample
from xaibench.kit.testing import check_component

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

RES, SIZE, TILE = 0.5, 128, 32
X0, Y0 = 1_800_000.0, 5_800_000.0
NAMES = ("red", "green", "blue", "nir")
SPLITS = ("train", "val", "test")


def reflectance(seed, bands=4):
    """uint16 (bands, SIZE, SIZE) in 1..12000 (0 is the nodata value); the top-left tile is no data in every
    band, and in tile (row 1, col 1) a 4 x 4 patch is no data in the last band only."""
    data = np.random.default_rng(seed).integers(1, 12001, (bands, SIZE, SIZE)).astype(np.uint16)
    data[:, :TILE, :TILE] = 0
    data[-1, TILE + 2:TILE + 6, TILE + 2:TILE + 6] = 0
    return data


def write_tif(path, data, *, descriptions=NAMES, nodata=0, colorinterp=None, x0=X0):
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=data.shape[0], dtype=data.dtype,
                       crs="EPSG:2193", transform=from_origin(x0, Y0, RES, RES), nodata=nodata,
                       photometric="MINISBLACK") as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
        if colorinterp:
            dst.colorinterp = colorinterp
    return path


@pytest.fixture(scope="module")
def lcdb(tmp_path_factory):
    """An LCDB GeoPackage in EPSG:4326 over two rasters side by side (the second starts 100 m east)."""
    def box(col0, col1, x0=X0):
        return shapely.box(x0 + col0 * RES, Y0 - SIZE * RES, x0 + col1 * RES, Y0)

    polygons = [(69, box(-10, 64)), (40, box(64, SIZE + 10)), (69, box(-10, 64, X0 + 100)),
                (40, box(64, SIZE + 10, X0 + 100))]
    frame = gpd.GeoDataFrame({"Class_2018": [code for code, _ in polygons]},
                             geometry=[shapely.MultiPolygon([geom]) for _, geom in polygons],
                             crs="EPSG:2193").to_crs("EPSG:4326")
    path = tmp_path_factory.mktemp("lcdb") / "lcdb-v50.gpkg"
    frame.to_file(path, driver="GPKG", engine="pyogrio")
    return path


@pytest.fixture(scope="module")
def prepared(lcdb, tmp_path_factory):
    """Two 4-band 16-bit rasters prepared through the command line: (imagery folder, prepared folder)."""
    imagery = tmp_path_factory.mktemp("imagery")
    write_tif(imagery / "a.tif", reflectance(0))
    write_tif(imagery / "b.tif", reflectance(1), x0=X0 + 100)
    out = tmp_path_factory.mktemp("prepared") / "out"
    assert cli.main(["data", "prepare", "lcdb-waikato", "--imagery", str(imagery), "--lcdb", str(lcdb),
                     "--out", str(out), "--tile-size", str(TILE)]) == 0
    return imagery, out


def dataset(root, **params):
    return create("datasets", "lcdb-waikato", root=str(root), image_size=TILE, block_tiles=1, **params)


def all_samples(data):
    return {s.id: s for split in SPLITS for s in data.split(split)}


def window_of(tile_id):
    """(raster stem, row, col) pixel offsets of a tile id like ``a_r000032_c000064``."""
    stem, row, col = tile_id.rsplit("_", 2)
    return stem, int(row[1:]), int(col[1:])


def test_every_band_is_kept_values_preserved_and_the_georeference_unchanged(prepared):
    imagery, out = prepared
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["bands"] == {"names": list(NAMES), "composite": [0, 1, 2], "dtype": "uint16",
                             "source_bands": [1, 2, 3, 4]}
    assert meta["skipped"]["nodata"] == 2  # the top-left tile of each raster; the partial patch is kept
    with open(out / "labels.csv", newline="") as handle:
        rows = {row["tile_id"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 2 * 15
    for tile_id, row in rows.items():
        stem, r, c = window_of(tile_id)
        assert row["image"] == f"images/{tile_id}.tif"
        with rasterio.open(out / row["image"]) as tile, rasterio.open(imagery / f"{stem}.tif") as src:
            assert tile.count == 4 and tile.dtypes == ("uint16",) * 4 and tile.descriptions == NAMES
            assert tile.crs == src.crs and tile.nodata == 0
            window = rasterio.windows.Window(c, r, TILE, TILE)
            assert tile.transform == src.window_transform(window)
            assert tile.bounds == pytest.approx(tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
            np.testing.assert_array_equal(tile.read(), src.read(window=window))
            assert rasterio.enums.ColorInterp.alpha not in tile.colorinterp


def test_the_dataset_reads_4_band_samples_scaled_as_documented(prepared):
    imagery, out = prepared
    data = dataset(out)
    assert data.image_bands == Bands(NAMES, (0, 1, 2))
    samples = all_samples(data)
    assert len(samples) == 30
    source = {"a": reflectance(0), "b": reflectance(1)}
    for tile_id, sample in samples.items():
        validate_sample(sample, len(data.classes), data.image_bands)
        stem, r, c = window_of(tile_id)
        window = np.moveaxis(source[stem][:, r:r + TILE, c:c + TILE], 0, -1)
        assert sample.image.dtype == np.float32 and sample.image.shape == (TILE, TILE, 4)
        np.testing.assert_array_equal(sample.image, (window / 65535).astype(np.float32))  # no data (0) stays 0
        assert data.classes[sample.label] == ("forest" if c + TILE <= 64 else "grassland")
    patch = samples["a_r000032_c000032"].image
    assert (patch[2:6, 2:6, 3] == 0).all() and (patch[2:6, 2:6, :3] > 0).all()

    scaled = all_samples(dataset(out, scale=[0, 10000]))["b_r000096_c000064"].image
    window = np.moveaxis(source["b"][:, 96:, 64:96], 0, -1)
    np.testing.assert_array_equal(scaled, np.clip(window / 10000, 0, 1).astype(np.float32))
    assert scaled.max() == 1.0  # reflectance above 10000 is clipped
    assert dataset(out).describe()["bands"] == "4 bands (red, green, blue, nir; composite red, green, blue)"
    check_component("datasets", "lcdb-waikato", root=str(out), image_size=16, block_tiles=1, scale=[0, 10000])


def test_tiles_resize_band_by_band(prepared):
    _, out = prepared
    small = all_samples(create("datasets", "lcdb-waikato", root=str(out), image_size=16, block_tiles=1))
    full = all_samples(dataset(out))
    for tile_id in ("a_r000032_c000032", "b_r000096_c000096"):
        assert small[tile_id].image.shape == (16, 16, 4) and small[tile_id].mask.shape == (16, 16)
        for band in range(4):
            resized = Image.fromarray(full[tile_id].image[..., band], "F").resize((16, 16), Image.BILINEAR)
            np.testing.assert_array_equal(small[tile_id].image[..., band], np.asarray(resized))


def test_scale_parameters_are_checked(prepared):
    _, out = prepared
    with pytest.raises(ComponentParamsError, match="scale"):
        dataset(out, scale=[5, 5])
    with pytest.raises(UserError, match=r"scale: 2 \[low, high\] pairs for 4 bands"):
        dataset(out, scale=[[0, 1], [0, 1]]).check()
    per_band = dataset(out, scale=[[0, 10000], [0, 10000], [0, 10000], [0, 5000]])
    image = all_samples(per_band)["a_r000000_c000064"].image
    assert image[..., 3].max() == 1.0 and image[..., 0].max() < 1.0 + 1e-6
    assert "scale" not in dataset(out).params()
    assert dataset(out).fingerprint() != dataset(out, scale=[0, 10000]).fingerprint()


def test_reading_geotiff_tiles_without_rasterio_names_the_extra(prepared, monkeypatch):
    _, out = prepared
    data = dataset(out)
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(UserError, match=r"tile .*needs rasterio.*pip install 'xaibench\[geo\]'"):
        data.split("train")


def test_a_flagged_alpha_band_is_coverage_not_a_band(lcdb, tmp_path):
    from rasterio.enums import ColorInterp

    data = reflectance(2, bands=5)
    data[4] = 65535
    data[4, 100:, :10] = 0  # transparent: the bottom-left tile is skipped
    data[:4, :TILE, :TILE] = 1  # the top-left tile has data here; only the patch in the nir band is no data
    write_tif(tmp_path / "rgbna.tif", data, descriptions=None, nodata=None,
              colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined,
                           ColorInterp.alpha])
    out = create("datasets", "lcdb-waikato", root=str(tmp_path / "unused")).prepare(
        imagery=[str(tmp_path / "rgbna.tif")], lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE,
        progress=False)
    meta = json.loads((out / "prepare.json").read_text())
    # colour interpretations name bands only where none is undefined (the 4th is): numbers, then
    assert meta["bands"] == {"names": ["band 1", "band 2", "band 3", "band 4"], "composite": [0, 1, 2],
                             "dtype": "uint16", "source_bands": [1, 2, 3, 4]}
    assert meta["skipped"]["nodata"] == 1 and meta["tiles"] == 15
    sample = all_samples(dataset(out))["rgbna_r000000_c000000"]
    np.testing.assert_array_equal(sample.image, (np.moveaxis(data[:4, :TILE, :TILE], 0, -1) / 65535).astype(np.float32))


def test_float_reflectance_is_kept_as_float(lcdb, tmp_path):
    data = np.random.default_rng(3).uniform(0, 1, (4, SIZE, SIZE)).astype(np.float32)
    data[:, :TILE, :TILE] = np.nan
    (tmp_path / "imagery").mkdir()
    write_tif(tmp_path / "imagery" / "f.tif", data, nodata=float("nan"))
    assert cli.main(["data", "prepare", "lcdb-waikato", "--imagery", str(tmp_path / "imagery"), "--lcdb", str(lcdb),
                     "--out", str(tmp_path / "out"), "--tile-size", str(TILE)]) == 0
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["bands"]["dtype"] == "float32"
    samples = all_samples(dataset(tmp_path / "out"))
    assert len(samples) == 15  # the NaN tile is no data
    sample = samples["f_r000064_c000096"]
    np.testing.assert_array_equal(sample.image, np.moveaxis(data[:, 64:96, 96:], 0, -1))


def test_rasters_of_other_bands_are_refused_before_anything_is_written(lcdb, tmp_path):
    imagery = tmp_path / "imagery"
    imagery.mkdir()
    write_tif(imagery / "a.tif", reflectance(0))
    write_tif(imagery / "b.tif", reflectance(1, bands=3), descriptions=NAMES[:3], x0=X0 + 100)
    with pytest.raises(UserError, match=re.escape(f"{imagery / 'b.tif'} has bands red, green, blue (uint16) but "
                                                  f"{imagery / 'a.tif'} has red, green, blue, nir (uint16)")):
        create("datasets", "lcdb-waikato", root=str(tmp_path)).prepare(
            imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE, progress=False)
    assert not (tmp_path / "out").exists()


def test_8_bit_rgb_imagery_still_gives_png_tiles_and_an_rgb_dataset(lcdb, tmp_path):
    imagery = tmp_path / "imagery"
    imagery.mkdir()
    rgb = np.random.default_rng(4).integers(1, 256, (3, SIZE, SIZE)).astype(np.uint8)
    write_tif(imagery / "rgb.tif", rgb, descriptions=None, nodata=None)
    out = create("datasets", "lcdb-waikato", root=str(tmp_path)).prepare(
        imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE, progress=False)
    assert "bands" not in json.loads((out / "prepare.json").read_text())
    assert sorted(p.suffix for p in (out / "images").iterdir()) == [".png"] * 16
    data = dataset(out)
    assert data.image_bands == Bands.rgb3()
    sample = all_samples(data)["rgb_r000032_c000096"]
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.image, np.moveaxis(rgb[:, 32:64, 96:], 0, -1))


def test_4_band_8_bit_imagery_keeps_a_fourth_band_whose_colour_is_set(lcdb, tmp_path):
    """LINZ's RGBA aerials have an unflagged 4th band that is alpha (``test_lcdb_waikato``); a 4th band with
    a colour interpretation (here gray, as ``gdal_edit.py -colorinterp_4 gray`` sets it) is near-infrared."""
    from rasterio.enums import ColorInterp

    imagery = tmp_path / "imagery"
    imagery.mkdir()
    rgbn = np.random.default_rng(5).integers(1, 256, (4, SIZE, SIZE)).astype(np.uint8)
    write_tif(imagery / "rgbn.tif", rgbn, nodata=None,
              colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.gray])
    out = create("datasets", "lcdb-waikato", root=str(tmp_path)).prepare(
        imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE, progress=False)
    assert json.loads((out / "prepare.json").read_text())["bands"]["dtype"] == "uint8"
    with rasterio.open(out / "images" / "rgbn_r000096_c000000.tif") as tile:  # the 4th band is no alpha there
        assert tile.count == 4 and ColorInterp.alpha not in tile.colorinterp
    data = dataset(out)
    assert data.image_bands == Bands(NAMES, (0, 1, 2))
    sample = all_samples(data)["rgbn_r000096_c000000"]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (TILE, TILE, 4)
    np.testing.assert_array_equal(sample.image, np.moveaxis(rgbn[:, 96:, :TILE], 0, -1))
