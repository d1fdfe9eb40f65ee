"""The ``lcdb-waikato`` dataset: preparing tiles from GeoTIFFs and LCDB polygons, and reading them back.

The fixtures are written here in the real formats: an EPSG:2193 RGBA GeoTIFF with an alpha-0 corner, a
3-band one, and a GeoPackage of LCDB-schema MultiPolygons stored in EPSG:4326, so every label below also
proves the reprojection. Raster A (4 x 4 tiles of 112 px at 0.3 m) is forest (69) left of pixel column 190
and grassland (40) right of it, with a 40 x 40 px lake (21) in tile (0, 3) and a "Not land" (0) rectangle
over the bottom right. Raster B is cropland (30) on its left half and built-up (1) on its right half.
"""

import csv
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from xaibench.commands import cli
from xaibench.errors import ComponentParamsError, UserError
from xaibench_plugins import lcdb_waikato
from xaibench_plugins.lcdb_prepare import DEFAULT_GROUPS, LABEL_COLUMNS, class_mapping, prepare
from xaibench_plugins.lcdb_waikato import LcdbWaikatoDataset

rasterio = pytest.importorskip("rasterio")
gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")

RES, SIZE, TILE = 0.3, 448, 112
X0, Y0 = 1_800_960.0, 5_779_200.0  # top-left of raster A, on the 2 x 2-tile block grid (67.2 m)
B_OFFSET = 1008.0  # raster B lies this far east of A
FOREST_EDGE, LAKE, NOT_LAND = 190, (346, 386, 20, 60), (270, 336)  # pixel columns / (c0, c1, r0, r1) / (c0, r0)

# (tile row, tile col) of raster A -> (super-class, coverage); absent tiles are skipped.
EXPECTED_A = {
    (1, 0): ("forest", 1.0), (1, 1): ("forest", 78 / 112), (2, 0): ("forest", 1.0), (2, 1): ("forest", 78 / 112),
    (3, 0): ("forest", 1.0), (3, 1): ("forest", 78 / 112),
    (0, 2): ("grassland", 1.0), (0, 3): ("grassland", 1 - 1600 / 112**2), (1, 2): ("grassland", 1.0),
    (1, 3): ("grassland", 1.0), (2, 2): ("grassland", 1.0), (2, 3): ("grassland", 1.0),
}  # (0, 0), (0, 1): alpha 0; (3, 2): 41 % grassland; (3, 3): only "Not land"
EXPECTED_B = {(r, c): ("cropland" if c < 2 else "artificial", 1.0) for r in range(4) for c in range(4)}


def pixel_box(col0, col1, row0, row1, x0=X0):
    """A rectangle given in raster-A pixel coordinates, in EPSG:2193 metres."""
    return shapely.box(x0 + col0 * RES, Y0 - row1 * RES, x0 + col1 * RES, Y0 - row0 * RES)


def pattern(offset):
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([(cols + offset) % 256, rows % 256, (cols // 7 + rows // 5) % 256]).astype(np.uint8)


def write_tif(path, bands, x0, **options):
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=len(bands), dtype="uint8",
                       crs="EPSG:2193", transform=from_origin(x0, Y0, RES, RES), tiled=True, blockxsize=128,
                       blockysize=128, **options) as dst:
        dst.write(bands)


def write_sources(folder, *, alpha_flagged=True):
    """Raster A (RGBA), raster B (RGB) and the LCDB GeoPackage (EPSG:4326) under ``folder``."""
    imagery = folder / "imagery"
    imagery.mkdir(parents=True)
    alpha = np.full((1, SIZE, SIZE), 255, np.uint8)
    alpha[0, :10, :114] = 0  # reaches 2 columns into tile (0, 1)
    write_tif(imagery / "BD33_5000_0402.tiff", np.concatenate([pattern(0), alpha]), X0,
              **({} if alpha_flagged else {"photometric": "RGB"}))
    write_tif(imagery / "BD33_5000_0403.tif", pattern(100), X0 + B_OFFSET)

    lake = pixel_box(*LAKE)
    not_land = pixel_box(NOT_LAND[0], 548, NOT_LAND[1], 548)
    grass = pixel_box(FOREST_EDGE, 548, -100, 548).difference(lake).difference(not_land)
    polygons = [
        (69, "Indigenous Forest", pixel_box(-100, FOREST_EDGE, -100, 548)),
        (40, "High Producing Exotic Grassland", grass),
        (21, "Lake or Pond", lake),
        (0, "Not land", not_land),
        (30, "Short-rotation Cropland", pixel_box(-100, 224, -100, 548, X0 + B_OFFSET)),
        (1, "Built-up Area (settlement)", pixel_box(224, 548, -100, 548, X0 + B_OFFSET)),
    ]
    frame = gpd.GeoDataFrame(
        {
            "LCDB_UID": [f"lcdb{1000000 + i}" for i in range(len(polygons))],
            "Class_2018": [code for code, _, _ in polygons],
            "Name_2018": [name for _, name, _ in polygons],
            "Class_2012": [code for code, _, _ in polygons],
            "Wetland_18": ["no"] * len(polygons),
            "Onshore_18": ["yes"] * len(polygons),
        },
        geometry=[shapely.MultiPolygon([geom]) for _, _, geom in polygons],
        crs="EPSG:2193",
    ).to_crs("EPSG:4326")
    lcdb = folder / "lcdb-v50.gpkg"
    frame.to_file(lcdb, driver="GPKG", engine="pyogrio")
    return imagery, lcdb


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    imagery, lcdb = sources
    return prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path_factory.mktemp("prepared")),
                   tile_size=TILE, progress=False)


@pytest.fixture
def fresh(prepared, tmp_path):
    """A copy of the prepared folder without splits.csv, for tests that write into it."""
    root = tmp_path / "lcdb"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns("splits.csv"))
    return root


def read_labels(root):
    with open(root / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def expected_labels():
    out = {}
    for stem, table in (("BD33_5000_0402", EXPECTED_A), ("BD33_5000_0403", EXPECTED_B)):
        for (r, c), value in table.items():
            out[f"{stem}_r{r * TILE:06d}_c{c * TILE:06d}"] = value
    return out


def position(tile_id):
    """(row, col) pixel offsets of a tile id like ``BD33_5000_0402_r000112_c000224``."""
    row, col = tile_id.rsplit("_", 2)[1:]
    return int(row[1:]), int(col[1:])


def png(path):
    with Image.open(path) as image:
        return np.asarray(image)


# -- prepare -----------------------------------------------------------------------------------------------


def test_every_tile_gets_the_expected_label_and_skipped_tiles_are_absent(prepared):
    fields, rows = read_labels(prepared)
    assert fields == LABEL_COLUMNS
    got = {row["tile_id"]: (row["super_class"], float(row["coverage"])) for row in rows}
    expected = expected_labels()
    assert sorted(got) == sorted(expected)  # the no-data corner, (3, 2) and (3, 3) are left out
    for tile_id, (label, coverage) in expected.items():
        assert got[tile_id][0] == label, tile_id
        assert got[tile_id][1] == pytest.approx(coverage, abs=1e-6), tile_id
    by_id = {row["tile_id"]: row for row in rows}
    lake_tile = by_id["BD33_5000_0402_r000000_c000336"]
    assert lake_tile["class_codes"] == "21 40" and lake_tile["class_pixels"] == "21:1600 40:10944"
    assert by_id["BD33_5000_0402_r000112_c000112"]["class_codes"] == "40 69"  # never 0: "Not land" dropped
    assert {row["crs"] for row in rows} == {"EPSG:2193"}
    assert {row["source"] for row in rows} == {"BD33_5000_0402.tiff", "BD33_5000_0403.tif"}
    window = by_id["BD33_5000_0403_r000224_c000336"]
    assert [int(window[k]) for k in ("col", "row", "width", "height")] == [336, 224, TILE, TILE]
    assert float(window["x_min"]) == pytest.approx(X0 + B_OFFSET + 336 * RES)
    assert float(window["y_max"]) == pytest.approx(Y0 - 224 * RES)
    meta = (prepared / "prepare.json").read_text()
    assert '"nodata": 2' in meta and '"low_coverage": 1' in meta and '"uncovered": 1' in meta


def test_tile_images_are_the_raster_windows_and_masks_the_polygons(prepared, sources):
    mixed = png(prepared / "masks" / "BD33_5000_0402_r000112_c000112.png")  # forest up to pixel column 190
    expected = np.zeros((TILE, TILE), np.uint8)
    expected[:, : FOREST_EDGE - TILE] = 255
    np.testing.assert_array_equal(mixed, expected)

    lake = png(prepared / "masks" / "BD33_5000_0402_r000000_c000336.png")  # grassland around the lake
    expected = np.full((TILE, TILE), 255, np.uint8)
    expected[LAKE[2]:LAKE[3], LAKE[0] - 336:LAKE[1] - 336] = 0
    np.testing.assert_array_equal(lake, expected)
    np.testing.assert_array_equal(png(prepared / "codes" / "BD33_5000_0402_r000000_c000336.png"),
                                  np.where(expected == 255, 40, 21))

    # The mask's area equals the polygon's area inside the tile, read back from the 4326 GeoPackage.
    polygons = gpd.read_file(sources[1]).to_crs("EPSG:2193")
    forest = polygons.loc[polygons["Class_2018"] == 69, "geometry"].iloc[0]
    tile = pixel_box(TILE, 2 * TILE, TILE, 2 * TILE)
    assert (mixed == 255).sum() * RES**2 == pytest.approx(forest.intersection(tile).area, abs=TILE * RES**2)

    image = png(prepared / "images" / "BD33_5000_0403_r000224_c000336.png")
    assert image.shape == (TILE, TILE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.moveaxis(pattern(100)[:, 224:336, 336:448], 0, -1))


def test_an_unflagged_fourth_band_is_read_as_alpha(tmp_path):
    imagery, lcdb = write_sources(tmp_path / "src", alpha_flagged=False)
    with rasterio.open(imagery / "BD33_5000_0402.tiff") as src:
        assert src.colorinterp[3] == rasterio.enums.ColorInterp.undefined
    out = prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE, progress=False)
    assert sorted(row["tile_id"] for row in read_labels(out)[1]) == sorted(expected_labels())


def test_prepare_reads_the_imagery_one_tile_window_at_a_time(sources, tmp_path, monkeypatch):
    from rasterio.io import DatasetReader

    windows = []
    for method in ("read", "read_masks", "dataset_mask"):
        original = getattr(DatasetReader, method)

        def spy(self, *args, _original=original, **kwargs):
            windows.append((kwargs.get("window"), self.width, self.height))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(DatasetReader, method, spy)
    imagery, lcdb = sources
    prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE, progress=False)
    assert len(windows) >= 2 * 28  # a mask and the pixels of every kept tile
    for window, width, height in windows:
        assert window is not None, "a read without a window reads the whole raster"
        assert (window.width, window.height) == (TILE, TILE) and TILE * TILE < width * height


def test_missing_geo_libraries_name_the_extra(sources, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now raises ImportError
    imagery, lcdb = sources
    with pytest.raises(UserError, match=r"pip install 'xaibench\[geo\]'"):
        prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_wrong_class_field_lists_the_fields(sources, tmp_path):
    imagery, lcdb = sources
    with pytest.raises(UserError, match="no field 'Class_2019'") as error:
        prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), class_field="Class_2019",
                progress=False)
    for field in ("Class_2018", "Name_2018", "LCDB_UID", "Wetland_18", "Onshore_18"):
        assert field in str(error.value)
    with pytest.raises(UserError, match="holds text"):
        prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), class_field="Name_2018",
                progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_inputs_are_user_errors_and_write_nothing(sources, tmp_path):
    imagery, lcdb = sources
    out = tmp_path / "out"
    with pytest.raises(UserError, match="imagery not found: .*nowhere"):
        prepare(imagery=[str(tmp_path / "nowhere.tiff")], lcdb=str(lcdb), out=str(out), progress=False)
    with pytest.raises(UserError, match="LCDB file not found"):
        prepare(imagery=str(imagery), lcdb=str(tmp_path / "lcdb.gpkg"), out=str(out), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .tif or .tiff"):
        prepare(imagery=str(tmp_path / "empty"), lcdb=str(lcdb), out=str(out), progress=False)
    assert not out.exists()


def test_an_interrupted_preparation_leaves_no_labels(sources, fresh, monkeypatch):
    imagery, lcdb = sources
    saved = []

    def crash(self, path, *args, **kwargs):
        if len(saved) == 10:
            raise KeyboardInterrupt
        saved.append(path)

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(fresh), tile_size=TILE, progress=False)
    assert not (fresh / "labels.csv").exists()  # the old labels would have claimed overwritten tiles
    with pytest.raises(UserError, match="xaibench data prepare lcdb-waikato --imagery DIR --lcdb FILE --out DIR"):
        LcdbWaikatoDataset(root=str(fresh)).check()


def test_the_command_line_prepares_a_folder(sources, tmp_path, capsys):
    imagery, lcdb = sources
    out = tmp_path / "cli"
    code = cli.main(["data", "prepare", "lcdb-waikato", "--imagery", str(imagery), "--lcdb", str(lcdb),
                     "--out", str(out), "--tile-size", str(TILE)])
    assert code == 0
    assert len(read_labels(out)[1]) == len(expected_labels())
    code = cli.main(["data", "prepare", "lcdb-waikato", "--imagery", str(imagery), "--lcdb", str(lcdb),
                     "--out", str(tmp_path / "other"), "--class-field", "Klass"])
    assert code == 2 and "Class_2018" in capsys.readouterr().err


# -- the dataset -------------------------------------------------------------------------------------------


def test_the_dataset_reads_samples_without_geo_libraries(fresh, registry, monkeypatch):
    for module in ("rasterio", "geopandas", "pyogrio", "shapely", "pyproj"):
        monkeypatch.setitem(sys.modules, module, None)
    dataset = registry.create("datasets", "lcdb-waikato", root=str(fresh), image_size=64, block_tiles=2)
    assert dataset.classes == list(DEFAULT_GROUPS) == [
        "artificial", "bare", "water", "cropland", "grassland", "scrub", "forest"]
    samples = [s for name in ("train", "val", "test") for s in dataset.split(name)]
    expected = expected_labels()
    assert sorted(s.id for s in samples) == sorted(expected)
    for sample in samples:
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (64, 64) and sample.mask.dtype == bool
        assert dataset.classes[sample.label] == expected[sample.id][0]
        assert sample.mask.mean() == pytest.approx(expected[sample.id][1], abs=0.03)
    full = LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=TILE)
    tile = next(s for name in ("train", "val", "test") for s in full.split(name)
                if s.id == "BD33_5000_0402_r000112_c000112")
    assert tile.image.shape == (TILE, TILE, 3) and tile.mask[:, : FOREST_EDGE - TILE].all()
    assert not tile.mask[:, FOREST_EDGE - TILE:].any()


def test_dataset_parameters_are_validated(registry, fresh):
    with pytest.raises(ComponentParamsError, match="image_size"):
        registry.create("datasets", "lcdb-waikato", root=str(fresh), image_size=8)
    with pytest.raises(ComponentParamsError, match="test_fraction"):
        registry.create("datasets", "lcdb-waikato", root=str(fresh), test_fraction=0)
    with pytest.raises(UserError, match="below 1"):
        LcdbWaikatoDataset(root=str(fresh), val_fraction=0.5, test_fraction=0.5).check()


def test_check_says_how_to_prepare(tmp_path):
    hint = "xaibench data prepare lcdb-waikato --imagery DIR --lcdb FILE --out DIR"
    with pytest.raises(UserError, match="does not exist.*" + hint):
        LcdbWaikatoDataset(root=str(tmp_path / "missing")).check()
    with pytest.raises(UserError, match="no labels.csv.*" + hint):
        LcdbWaikatoDataset(root=str(tmp_path)).check()


def test_splits_are_deterministic_spatially_grouped_and_saved(fresh):
    dataset = LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=32)
    fingerprint = dataset.fingerprint()
    assert not (fresh / "splits.csv").exists()  # fingerprinting writes nothing
    ids = {name: [s.id for s in dataset.split(name)] for name in ("train", "val", "test")}
    assert ids["train"] and ids["val"] and ids["test"]  # 8 blocks: enough for a block in every split
    assert sorted(sum(ids.values(), [])) == sorted(expected_labels())

    with open(fresh / "splits.csv", newline="") as handle:
        saved = list(csv.DictReader(handle))
    blocks = {}
    for row in saved:
        blocks.setdefault(row["block"], set()).add(row["split"])
        assert row["tile_id"] in ids[row["split"]]
    assert len(blocks) == 8 and all(len(splits) == 1 for splits in blocks.values())
    # a block is 2 x 2 tiles: the four tiles of raster A's top-right quarter share one
    quarter = [row["block"] for row in saved if row["tile_id"].startswith("BD33_5000_0402")
               and position(row["tile_id"])[0] < 224 and position(row["tile_id"])[1] >= 224]
    assert len(quarter) == 4 and len(set(quarter)) == 1

    again = LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=32)
    assert {name: [s.id for s in again.split(name)] for name in ids} == ids
    assert again.fingerprint() == fingerprint

    # splits.csv is reused as written: moving a tile there moves it in the dataset and its fingerprint
    moved = next(row for row in saved if row["split"] == "train")
    moved["split"] = "test"
    with open(fresh / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(saved[0]))
        writer.writeheader()
        writer.writerows(saved)
    edited = LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=32)
    assert moved["tile_id"] in [s.id for s in edited.split("test")]
    assert edited.fingerprint() != fingerprint

    # other split parameters give their own assignment (rewriting the file), not the saved one
    other = LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=32, split_seed=1)
    assert other.fingerprint() not in (fingerprint, edited.fingerprint())
    other.split("train")
    with open(fresh / "splits.csv", newline="") as handle:
        assert {row["split_key"] for row in csv.DictReader(handle)} == {other._split_key()}


def test_a_split_saved_by_another_split_method_is_made_again(fresh, monkeypatch):
    dataset = LcdbWaikatoDataset(root=str(fresh), block_tiles=2)
    current = {name: [s.id for s in dataset.split(name)] for name in ("train", "val", "test")}
    with open(fresh / "splits.csv", newline="") as handle:
        saved = list(csv.DictReader(handle))
    for row in saved:  # what an older method might have made, under the key it would have written
        row["split"] = "train"
    monkeypatch.setattr(lcdb_waikato, "SPLIT_METHOD", "an-older-method")
    old_key = LcdbWaikatoDataset(root=str(fresh), block_tiles=2)._split_key()
    assert old_key != saved[0]["split_key"]
    with open(fresh / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(saved[0]))
        writer.writeheader()
        writer.writerows({**row, "split_key": old_key} for row in saved)
    assert not LcdbWaikatoDataset(root=str(fresh), block_tiles=2).split("test")  # that key reads it back
    monkeypatch.undo()
    again = LcdbWaikatoDataset(root=str(fresh), block_tiles=2)
    assert {name: [s.id for s in again.split(name)] for name in current} == current
    with open(fresh / "splits.csv", newline="") as handle:
        assert {row["split_key"] for row in csv.DictReader(handle)} == {again._split_key()}


def test_the_fingerprint_follows_content_not_location(fresh, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(fresh, moved)
    here = LcdbWaikatoDataset(root=str(fresh), block_tiles=2).fingerprint()
    assert LcdbWaikatoDataset(root=str(moved), block_tiles=2).fingerprint() == here
    assert LcdbWaikatoDataset(root=str(fresh), block_tiles=2, image_size=64).fingerprint() != here
    text = (moved / "labels.csv").read_text().replace(",forest,", ",scrub,", 1)
    (moved / "labels.csv").write_text(text)
    assert LcdbWaikatoDataset(root=str(moved), block_tiles=2).fingerprint() != here


def test_a_class_mapping_override_relabels_tiles_and_masks(fresh):
    dataset = LcdbWaikatoDataset(root=str(fresh), groups={"trees": [69], "pasture": [40, 21]}, block_tiles=2)
    assert dataset.classes == ["trees", "pasture"]
    samples = {s.id: s for name in ("train", "val", "test") for s in dataset.split(name)}
    expected = {k: v for k, v in expected_labels().items() if k.startswith("BD33_5000_0402")}
    assert sorted(samples) == sorted(expected)  # raster B's cropland and built-up belong to no group
    for tile_id, (label, _) in expected.items():
        assert dataset.classes[samples[tile_id].label] == {"forest": "trees", "grassland": "pasture"}[label]
    assert samples["BD33_5000_0402_r000000_c000336"].mask.all()  # the lake is pasture now
    assert dataset.describe()["dropped_by_groups"] == 16
    assert dataset.fingerprint() != LcdbWaikatoDataset(root=str(fresh), block_tiles=2).fingerprint()

    with pytest.raises(UserError, match="class 0"):
        LcdbWaikatoDataset(root=str(fresh), groups={"sea": [0, 20]}).check()
    with pytest.raises(UserError, match="in both"):
        LcdbWaikatoDataset(root=str(fresh), groups={"a": [40], "b": [40, 41]}).check()


def test_prepare_with_a_mapping_keeps_tiles_the_default_would_skip(sources, tmp_path):
    imagery, lcdb = sources
    groups = {"land": [1, 30, 40, 69], "water": [21]}
    out = prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(tmp_path / "out"), tile_size=TILE,
                  min_coverage=0.3, groups=groups, progress=False)
    rows = {row["tile_id"]: row for row in read_labels(out)[1]}
    assert rows["BD33_5000_0402_r000336_c000224"]["super_class"] == "land"  # 41 % >= 0.3
    dataset = LcdbWaikatoDataset(root=str(out), groups=groups, block_tiles=2)
    assert dataset.classes == ["land", "water"]
    assert len(dataset.describe()["sources"]) == 2 and dataset.describe()["tiles"] == len(rows)


def test_describe_counts_classes_and_sources(fresh):
    details = LcdbWaikatoDataset(root=str(fresh), block_tiles=2).describe()
    assert details["per_class"] == {"artificial": 8, "bare": 0, "water": 0, "cropland": 8, "grassland": 6,
                                    "scrub": 0, "forest": 6}
    assert details["sources"] == {"BD33_5000_0402.tiff": 12, "BD33_5000_0403.tif": 16}
    assert details["blocks"] == 8 and details["tile_size"] == TILE and details["class_field"] == "Class_2018"


def test_too_few_blocks_is_a_user_error(fresh):
    with pytest.raises(UserError, match="too few"):
        LcdbWaikatoDataset(root=str(fresh), block_tiles=100).fingerprint()


def test_the_default_mapping_covers_the_33_mainland_classes():
    codes = [code for group in DEFAULT_GROUPS.values() for code in group]
    assert len(codes) == len(set(codes)) == 33
    assert 0 not in codes and 80 not in codes and 81 not in codes
    assert class_mapping(None) == DEFAULT_GROUPS


def test_lcdb_waikato_keeps_the_dataset_contract(fresh):
    from xaibench.kit.testing import check_component

    check_component("datasets", "lcdb-waikato", root=str(fresh), image_size=32, block_tiles=2)
