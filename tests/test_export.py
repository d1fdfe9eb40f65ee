"""``xaibench export``: a tiny run and loop on a prepared LCDB/Waikato fixture, exported as GeoPackage,
GeoJSON and GeoTIFF, read back with geopandas and rasterio."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from test_lcdb_waikato import write_sources

from xaibench.commands.cli import main

gpd = pytest.importorskip("geopandas")
rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")

GRID = """\
seeds: [0]
datasets: [{{name: lcdb-waikato, root: {root}, image_size: 32, block_tiles: 1}}]
backbones: [resnet18]
masks: [white]
ensembles: [{{name: logit-mix, sweep: {{alpha: [0.5]}}}}]
explainers: [gradcam]
seeders: [{{name: top-k, k: 2, min_distance: 4}}]
segmenters: [random-walker]
train: {{epochs: 1, batch_size: 8}}
finetune: {{epochs: 1, batch_size: 8}}
protocol: {{faithfulness_steps: 0}}
loop: {{rounds: 1}}
"""


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    from xaibench_plugins.lcdb_prepare import prepare

    base = tmp_path_factory.mktemp("export")
    imagery, lcdb = write_sources(base / "sources")
    root = prepare(imagery=str(imagery), lcdb=str(lcdb), out=str(base / "prepared"), tile_size=112, progress=False)
    grid = base / "grid.yaml"
    grid.write_text(GRID.format(root=root))
    out = base / "run"
    assert main(["run", "--grid", str(grid), "--out", str(out), "--quiet"]) in (0, 1)
    assert main(["loop", "--grid", str(grid), "--out", str(out), "--quiet"]) in (0, 1)
    with open(root / "labels.csv", newline="") as handle:
        tiles = {row["tile_id"]: row for row in csv.DictReader(handle)}
    return out, tiles, gpd.read_file(lcdb).to_crs("EPSG:2193")


def _bounds(row):
    return shapely.box(*(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")))


def test_segmentations_are_polygons_in_the_tiles_crs_inside_their_tiles(exported_run, tmp_path, capsys):
    from xaibench_plugins.lcdb_prepare import DEFAULT_GROUPS

    out, tiles, lcdb = exported_run
    target = tmp_path / "seg.gpkg"
    assert main(["export", str(out), "--what", "segmentations", "--format", "gpkg", "--output", str(target)]) == 0
    assert "coordinates: map (EPSG:2193)" in capsys.readouterr().out
    frame = gpd.read_file(target)
    assert frame.crs.to_epsg() == 2193
    summary = json.loads((out / "run.json").read_text())
    n_test = int(pd.read_csv(out / "leaderboard.csv")["n_test"].iloc[0])
    assert 0 < len(frame) <= summary["cells"] * n_test  # at most one feature per test tile and cell
    assert set(frame.columns) >= {"tile", "class", "dataset", "mask", "ensemble", "seed", "explainer", "seeder",
                                  "segmenter", "acceptor", "round", "score", "geometry"}
    assert set(frame["ensemble"]) == {"baseline", "logit-mix(alpha=0.5)"}
    assert (frame["score"] > 0).any()
    for _, feature in frame.iterrows():
        tile = tiles[feature["tile"]]
        assert _bounds(tile).buffer(1e-6).contains(feature.geometry)
        assert feature["class"] == tile["super_class"]
        # against the source LCDB polygons of its class inside the tile, the polygon's IoU is the score the
        # run gave the segmentation against the rasterised mask (up to the 32-px rasterisation)
        truth = lcdb[lcdb["Class_2018"].isin(DEFAULT_GROUPS[feature["class"]])].union_all().intersection(_bounds(tile))
        geometry = feature.geometry
        iou = geometry.intersection(truth).area / geometry.union(truth).area
        assert iou == pytest.approx(feature["score"], abs=0.05)
    # one cell only, by its labels
    one = tmp_path / "one.gpkg"
    assert main(["export", str(out), "--what", "segmentations", "--format", "gpkg", "--cell", "ensemble=baseline",
                 "--output", str(one)]) == 0
    assert set(gpd.read_file(one)["tile"]) <= set(frame["tile"]) and len(gpd.read_file(one)) < len(frame)


def test_geojson_is_written_in_wgs84(exported_run, tmp_path):
    out, _, _ = exported_run
    target = tmp_path / "seg.geojson"
    assert main(["export", str(out), "--what", "segmentations", "--format", "geojson", "--output", str(target)]) == 0
    assert gpd.read_file(target).crs.to_epsg() == 4326


def test_a_loop_rounds_annotations_are_exported_with_the_acceptor(exported_run, tmp_path, capsys):
    out, tiles, _ = exported_run
    target = tmp_path / "ann.gpkg"
    assert main(["export", str(out), "--what", "annotations", "--format", "gpkg", "--round", "0",
                 "--output", str(target)]) == 0
    frame = gpd.read_file(target)
    assert len(frame) > 0 and set(frame["round"]) == {0} and set(frame["acceptor"]) == {"agreement"}
    assert all(_bounds(tiles[t]).buffer(1e-6).contains(g) for t, g in zip(frame["tile"], frame.geometry))
    assert main(["export", str(out), "--what", "annotations", "--format", "gpkg", "--round", "5",
                 "--output", str(tmp_path / "late.gpkg")]) == 2
    assert "has not run" in capsys.readouterr().err and not (tmp_path / "late.gpkg").exists()


def test_saliency_is_one_georeferenced_geotiff_per_tile(exported_run, tmp_path):
    out, tiles, _ = exported_run
    folder = tmp_path / "saliency"
    assert main(["export", str(out), "--what", "saliency", "--format", "geotiff", "--cell", "ensemble=baseline",
                 "--output", str(folder)]) == 0
    files = sorted(folder.rglob("*.tif"))
    assert files
    with rasterio.open(files[0]) as tif:
        tile = tiles[files[0].stem]
        assert tif.crs.to_epsg() == 2193 and tif.dtypes == ("float32",)
        assert np.allclose(tuple(tif.bounds), [float(tile[k]) for k in ("x_min", "y_min", "x_max", "y_max")])


def test_export_mistakes_are_one_error_line(exported_run, tmp_path, capsys):
    out, _, _ = exported_run
    for argv, message in (
        (["--what", "saliency", "--format", "gpkg"], "does not hold saliency"),
        (["--what", "annotations", "--format", "gpkg"], "needs --round"),
        (["--what", "annotations", "--format", "gpkg", "--round", "-1"], "0 (the first round) or more"),
        (["--what", "segmentations", "--format", "gpkg", "--round", "1"], "only with --what annotations"),
        (["--what", "segmentations", "--format", "gpkg", "--cell", "colour=red"], "KEY=VALUE"),
    ):
        assert main(["export", str(out), *argv, "--output", str(tmp_path / "x.gpkg")]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--what", "segmentations", "--format", "gpkg",
                 "--output", str(tmp_path / "x.gpkg")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "x.gpkg").exists()


def test_without_a_georeference_tiles_are_in_pixel_coordinates_and_the_summary_says_so(registry, tmp_path):
    from xaibench.commands import export
    from xaibench.pipeline.grid import Choice

    tiles = export.Tiles(registry, Choice("synthetic", {"n_train": 2, "n_val": 0, "n_test": 2, "image_size": 32}),
                         "test", 8, 8)
    transform, crs = tiles("test-00000")
    assert crs is None and tuple(transform)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 1:6] = True  # rows 2-3, columns 1-5
    found = export._write_vectors(export._features([("t", mask, transform, crs, {"score": 1.0})]), "gpkg",
                                  tmp_path / "p.gpkg", "segmentations")
    assert found["coordinates"].startswith("pixel") and found["crs"] is None
    geometry = gpd.read_file(tmp_path / "p.gpkg").geometry.iloc[0]
    assert geometry.bounds == (1.0, 2.0, 6.0, 4.0) and geometry.area == 10.0


def test_a_damaged_file_of_the_run_is_one_error_line_and_nothing_is_written(exported_run, tmp_path, capsys):
    import shutil

    out, _, _ = exported_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cell = sorted((copy / "cells").glob("*.npz"))[0]
    cell.write_bytes(cell.read_bytes()[:100])  # a truncated per-image file
    target = tmp_path / "out" / "seg.gpkg"
    assert main(["export", str(copy), "--what", "segmentations", "--format", "gpkg", "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the segmentation of cell ") and "cannot be read back" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    for maps in (copy / "cache" / "explain").glob("*/maps.npy"):
        maps.write_bytes(maps.read_bytes()[:200])  # truncated saliency maps
    folder = tmp_path / "out" / "saliency"
    assert main(["export", str(copy), "--what", "saliency", "--format", "geotiff", "--output", str(folder)]) == 2
    assert "(the file is truncated)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
