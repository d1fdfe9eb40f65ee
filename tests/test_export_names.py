"""``xaibench export --what saliency``: tiles whose ids reduce to the same file name (``ü.png`` and ``é.png``,
``x y.png`` and ``x_y.png``, ``A.png`` and ``a.png`` on a case-insensitive disk) each get their own file,
the count printed is the count written, and each file names its tile."""

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaibench.commands.cli import main

rasterio = pytest.importorskip("rasterio")

GRID = """\
seeds: [0]
datasets: [{{name: folder, root: {root}, image_size: 16}}]
backbones: [{{name: resnet18, weights: none}}]
explainers: [oracle]
seeders: [{{name: top-k, k: 2, min_distance: 2}}]
segmenters: [watershed]
train: {{epochs: 1, batch_size: 4}}
protocol: {{faithfulness_steps: 0}}
"""
# test tiles of class "a" whose ids collide once made shell-safe, and one that does not
COLLIDING = ("ü.png", "é.png", "x y.png", "x_y.png", "A.png", "a.png")
PLAIN = ("plain.png",)


@functools.cache
def tiny_run(base) -> tuple:
    """A folder dataset with colliding test names, run through a baseline with the oracle map (the mask)
    and a watershed segmentation (one cell):
    (run folder, the annotated test tiles' ids). Built once per test session under ``base``."""
    root = base / "names"
    rng = np.random.default_rng(0)
    for split, names in (("train", [f"{i}.png" for i in range(4)]), ("test", COLLIDING + PLAIN)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for name in names if label == "a" or split == "train" else ("b0.png",):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / name)
                if split == "test" and label == "a":  # explanations are of annotated images
                    (root / split / "masks" / label).mkdir(parents=True, exist_ok=True)
                    mask = np.zeros((16, 16), np.uint8)
                    mask[4:12, 4:12] = 255
                    Image.fromarray(mask).save(root / split / "masks" / label / f"{Path(name).stem}.png")
    grid = base / "names.yaml"
    grid.write_text(GRID.format(root=root))
    out = base / "names-run"
    assert main(["run", "--grid", str(grid), "--out", str(out), "--quiet"]) == 0
    tiles = [f"test/a/{name}" for name in COLLIDING + PLAIN]
    return out, tiles


@pytest.fixture(scope="session")
def named_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.getbasetemp())


def test_colliding_tile_names_each_get_a_file_and_the_count_printed_is_the_count_written(named_run, tmp_path,
                                                                                          capsys):
    out, tiles = named_run
    folder = tmp_path / "saliency"
    assert main(["export", str(out), "--what", "saliency", "--format", "geotiff", "--output", str(folder)]) == 0
    printed = capsys.readouterr().out
    files = sorted(folder.rglob("*.tif"))
    assert re.search(r"exported saliency: (\d+) tiles", printed).group(1) == str(len(files))
    written = {}
    for path in files:
        with rasterio.open(path) as tif:
            written[tif.tags()["tile"]] = path
    assert sorted(written) == sorted(tiles)  # every explained test tile, once, each in its own file
    assert len({p.name.casefold() for p in files}) == len(files)  # unique on a case-insensitive disk too
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.tif", p.name) for p in files)  # still shell-safe
    assert written["test/a/plain.png"].name == "test_a_plain.png.tif"  # a name that collides with none is kept
    # deterministic: a second export gives the same names
    again = tmp_path / "again"
    assert main(["export", str(out), "--what", "saliency", "--format", "geotiff", "--output", str(again)]) == 0
    assert sorted(p.relative_to(again) for p in again.rglob("*.tif")) == [p.relative_to(folder) for p in files]
