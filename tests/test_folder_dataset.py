"""The ``folder`` dataset on folders written here in the real formats (PNG RGB, L, RGBA, 16-bit, palette,
JPEG, TIFF, masks), with the bad files users' folders hold: each is an error naming it, or skipped and
counted with ``on_error: skip``, and a run over such a folder goes through."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from xaibench import create
from xaibench.commands.cli import main
from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.testing import check_component

SIZE = 32
CLASSES = ["field", "forest"]


def pixels(seed, height=SIZE, width=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def square_mask(height=SIZE, width=SIZE):
    mask = np.zeros((height, width), np.uint8)
    mask[4:12, 6:20] = 1
    return mask


def write_folder(root, n_per_class=4, n_test_per_class=2, masks=True):
    """``root/{train,test}/{field,forest}/`` of 32x32 PNGs, masks (values 0/1) on every forest image."""
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pixels(hash((split, name, i)) % 1000)).save(root / split / name / f"{i:02d}.png")
                if masks and name == "forest":
                    (root / split / "masks" / name).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(square_mask(), "L").save(root / split / "masks" / name / f"{i:02d}.png")
    return root


def folder(root, **params):
    return create("datasets", "folder", root=str(root), image_size=16, **params)


def test_every_pixel_format_loads_at_one_size_in_sorted_order(tmp_path):
    root = write_folder(tmp_path / "d")
    forest = root / "train" / "forest"
    Image.fromarray(pixels(1, 20, 30)[..., 0], "L").save(forest / "gray.png")
    Image.fromarray(np.dstack([pixels(2), np.zeros((SIZE, SIZE), np.uint8)]), "RGBA").save(forest / "rgba.png")
    Image.fromarray((pixels(3)[..., 0].astype(np.uint16) * 257)).save(forest / "wide.png")
    Image.fromarray(pixels(4)).quantize(colors=8).save(forest / "palette.png")
    Image.fromarray(pixels(5, 40, 24)).save(forest / "photo.jpg", quality=90)
    Image.fromarray(pixels(6)).save(forest / "scan.TIFF")
    (forest / "notes.txt").write_text("ignored: not an image suffix")
    mask = np.full((20, 30, 3), 255, np.uint8)
    mask[:5] = (0, 90, 0)
    Image.fromarray(mask).save(root / "train" / "masks" / "forest" / "gray.png")

    dataset = folder(root, mask_white_background=True)
    train = dataset.split("train")
    assert dataset.classes == CLASSES
    ids = [s.id for s in train]
    assert ids == sorted(ids) and len(ids) == 8 + 6
    assert "train/forest/photo.jpg" in ids and "train/forest/scan.TIFF" in ids
    assert all(s.image.shape == (16, 16, 3) and s.image.dtype == np.uint8 for s in train)
    assert {s.label for s in train if s.id.startswith("train/forest/")} == {1}
    gray = next(s for s in train if s.id == "train/forest/gray.png")
    assert np.array_equal(gray.image[..., 0], gray.image[..., 2])
    assert gray.mask.dtype == bool and gray.mask[:2].all() and not gray.mask[6:].any()
    # with white-background masks, the 0/1 masks (never white) are all foreground
    assert next(s for s in train if s.id == "train/forest/00.png").mask.all()
    assert next(s for s in train if s.id == "train/forest/rgba.png").mask is None


def test_the_folder_dataset_keeps_the_dataset_contract(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "val" / "field").mkdir(parents=True)
    (root / "val" / "forest").mkdir()
    Image.fromarray(pixels(9)).save(root / "val" / "forest" / "v.png")
    dataset = check_component("datasets", "folder", root=str(root), image_size=16)
    assert [s.id for s in dataset.split("val")] == ["val/forest/v.png"]
    forest = next(s for s in dataset.split("test") if s.label == 1)
    assert forest.mask.shape == (16, 16) and forest.mask.sum() == square_mask()[::2, ::2].sum()


def test_missing_splits_and_class_folders_are_errors_naming_them(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder(tmp_path / "nowhere").check()
    root = write_folder(tmp_path / "d")
    shutil.rmtree(root / "test" / "forest")
    with pytest.raises(UserError, match=re.escape(f"split 'test' has no folder for class 'forest': create "
                                                  f"{root / 'test' / 'forest'}")):
        folder(root).split("train")
    shutil.rmtree(root / "test")
    with pytest.raises(UserError, match=re.escape(f"{root} has no test/ folder")):
        folder(root).check()
    with pytest.raises(UserError, match="split 'train' has no folder for class 'lake'"):
        folder(write_folder(tmp_path / "e"), classes=["field", "lake"]).check()


def test_class_parameters_are_validated(tmp_path):
    with pytest.raises(ComponentParamsError, match="classes"):
        folder(tmp_path, classes=["field"])
    with pytest.raises(ComponentParamsError, match="classes"):
        folder(tmp_path, classes=["field", "masks"])
    with pytest.raises(ComponentParamsError, match="on_error"):
        folder(tmp_path, on_error="ignore")
    root = write_folder(tmp_path / "d")
    assert folder(root, classes=["forest", "field"]).split("test")[0].label == 1  # labels follow classes' order


def truncate(path):
    Image.fromarray(pixels(7, 64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:300])


BAD_FILES = {
    "truncated png": ("train/field/01.png", truncate, "truncated or corrupt"),
    "zero-byte file": ("train/forest/02.png", lambda p: p.write_bytes(b""), "empty"),
    "not an image": ("test/field/00.png", lambda p: p.write_text("<html>404</html>"), "not an image"),
    "truncated jpeg": ("test/forest/x.jpg",
                       lambda p: (Image.fromarray(pixels(8, 64, 64)).save(p, quality=90),
                                  p.write_bytes(p.read_bytes()[:400])), "truncated or corrupt"),
    "mask of another size": ("train/masks/forest/01.png",
                             lambda p: Image.fromarray(square_mask(SIZE, SIZE + 1), "L").save(p), "mask is 33x32"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_raises_naming_it(tmp_path, case):
    root = write_folder(tmp_path / "d")
    relative, make, words = BAD_FILES[case]
    make(root / relative)
    dataset = folder(root)
    with pytest.raises(UserError, match=re.escape(str(root / relative)) + ".*" + words):
        for split in ("train", "test"):
            dataset.split(split)


def test_bad_files_are_skipped_counted_and_named_with_on_error_skip(tmp_path):
    root = write_folder(tmp_path / "d")
    for relative, make, _ in BAD_FILES.values():
        make(root / relative)
    dataset = folder(root, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable file\(s\) in split 'train': train/field/01.png, "
                                         r"train/forest/01.png, train/forest/02.png"):
        train = dataset.split("train")
    with pytest.warns(UserWarning, match=r"skipped 2 .* split 'test'"):
        test = dataset.split("test")
    assert len(train) == 8 - 3 and len(test) == 4 + 1 - 2
    assert "train/forest/01.png" not in {s.id for s in train}  # its mask was bad: the image goes too
    details = dataset.describe()
    assert details["skipped"] == {"train": 3, "val": 0, "test": 2}
    named = {f["file"]: f["error"] for f in details["skipped_files"]}
    assert set(named) == {"train/field/01.png", "train/forest/01.png", "train/forest/02.png", "test/field/00.png",
                          "test/forest/x.jpg"}
    assert "mask is 33x32" in named["train/forest/01.png"] and "empty" in named["train/forest/02.png"]
    json.dumps(details)


def test_a_mask_without_foreground_means_no_annotation(tmp_path):
    root = write_folder(tmp_path / "d")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), "L").save(root / "train" / "masks" / "forest" / "03.png")
    dataset = folder(root)
    with pytest.warns(UserWarning, match=r"1 mask\(s\) in split 'train' have no foreground .*train/masks/forest/03"):
        train = dataset.split("train")
    assert next(s for s in train if s.id == "train/forest/03.png").mask is None
    assert sum(s.mask is not None for s in train) == 3
    assert dataset.describe()["empty_masks"]["train"] == 1


def test_fingerprint_follows_the_content_not_the_location(tmp_path):
    root = write_folder(tmp_path / "d")
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)  # copy2 keeps the modification times
    assert folder(root).fingerprint() == folder(moved).fingerprint()
    assert folder(root).fingerprint() != folder(root, on_error="skip").fingerprint()
    assert folder(root).fingerprint() != create("datasets", "folder", root=str(root), image_size=24).fingerprint()
    before = folder(root).fingerprint()
    stat = os.stat(root / "test" / "field" / "00.png")
    os.utime(root / "test" / "field" / "00.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    assert folder(root).fingerprint() != before


RUN_GRID = """\
name: folder-tiny
seeds: [0]
datasets:
  - name: folder
    root: {root}
    image_size: 32
    on_error: skip
backbones: [{{name: resnet18, weights: none}}]
masks: [white]
ensembles:
  - name: logit-mix
    sweep: {{alpha: [0.5]}}
explainers: [gradcam]
train: {{epochs: 1, batch_size: 4}}
finetune: {{epochs: 1, batch_size: 4}}
protocol: {{faithfulness_steps: 0}}
"""


def test_a_run_over_a_folder_with_bad_files_goes_through(registry, tmp_path, capsys):
    root = write_folder(tmp_path / "d", n_per_class=5, n_test_per_class=2)
    (root / "train" / "field" / "04.png").write_bytes(b"")
    truncate(root / "train" / "forest" / "04.png")
    (root / "test" / "forest" / "99.png").write_text("not a png")
    grid = tmp_path / "grid.yaml"
    grid.write_text(RUN_GRID.format(root=root))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["cells_failed"] == 0 and summary["cells_done"] == summary["cells"] >= 2
    capsys.readouterr()

    assert main(["data", "info", "folder", "--root", str(root), "--param", "on_error=skip",
                 "--param", "image_size=32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["details"]["skipped"] == {"train": 2, "val": 0, "test": 1}
    assert info["splits"]["train"]["samples"] == 8 and info["splits"]["test"]["samples"] == 4
    assert main(["data", "info", "folder", "--root", str(root)]) == 2
    assert f"error: {root / 'train' / 'field' / '04.png'}: the file is empty" in capsys.readouterr().err
