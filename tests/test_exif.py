"""EXIF orientation: a phone or camera JPEG stored sideways with an orientation tag is read as every viewer
shows it, and a mask drawn on the displayed image lines up with it (images and masks alike), through the
``folder`` dataset, ``xaibench data info`` and the audit's file facts."""

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from xaibench import create
from xaibench.commands.cli import main
from xaibench.commands.data import file_facts

# what a viewer does to the stored pixels for each orientation, and so what the camera stored
SHOWN_FROM_STORED = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
STORED_FROM_SHOWN = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
SIZE = 32  # the dataset's image_size


def displayed(width, height):
    """A dark (height, width) RGB tile with a bright block off the centre, and its mask as drawn on it."""
    shown = np.full((height, width, 3), 30, np.uint8)
    shown[2:12, 4:20] = 230
    mask = np.zeros((height, width), np.uint8)
    mask[2:12, 4:20] = 255
    return shown, mask


def save_rotated(pixels: np.ndarray, path, orientation: int, fmt: str):
    """``pixels`` (as displayed) stored turned the way a camera stores them, with the EXIF tag that turns
    them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(pixels).transpose(STORED_FROM_SHOWN[orientation])
    stored.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def write_folder(root, width, height, orientation, *, rotated_mask=False):
    shown, mask = displayed(width, height)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
        (root / split / "masks" / "a").mkdir(parents=True)
        path = root / split / "a" / "photo.jpg"
        save_rotated(shown, path, orientation, "JPEG")
        # the fixture is what viewers show: PIL's own EXIF transpose gives back the displayed pixels
        with Image.open(path) as check:
            assert np.abs(np.asarray(ImageOps.exif_transpose(check), np.int16) - shown).max() < 40
        mask_path = root / split / "masks" / "a" / "photo.png"
        if rotated_mask:
            save_rotated(mask, mask_path, orientation, "PNG")
        else:
            Image.fromarray(mask).save(mask_path)
        Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(root / split / "b" / "plain.png")
    return root


def block_iou(sample) -> float:
    bright = sample.image.mean(axis=-1) > 130
    return float((bright & sample.mask).sum() / (bright | sample.mask).sum())


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("width,height", [(40, 40), (48, 32)], ids=["square", "non-square"])
@pytest.mark.parametrize("rotated_mask", [False, True], ids=["mask-as-displayed", "mask-with-exif"])
def test_a_mask_drawn_on_the_displayed_image_covers_its_object(tmp_path, orientation, width, height, rotated_mask):
    root = write_folder(tmp_path / "photos", width, height, orientation, rotated_mask=rotated_mask)
    dataset = create("datasets", "folder", root=str(root), image_size=SIZE)
    (sample,) = [s for s in dataset.split("train") if s.mask is not None]
    bright = sample.image.mean(axis=-1) > 130
    assert bright[:SIZE // 2, :SIZE // 2].sum() > 0.9 * bright.sum()  # the block is top-left, as shown
    assert block_iou(sample) > 0.85  # misaligned, it was 0
    assert (bright & sample.mask).sum() >= 0.9 * bright.sum()


def test_data_info_and_the_audit_see_the_displayed_size(tmp_path, capsys):
    root = write_folder(tmp_path / "photos", 48, 32, 6)
    # stored 32 wide and 48 high: before, the 48x32 mask was refused as the wrong size
    with Image.open(root / "train" / "a" / "photo.jpg") as stored:
        assert stored.size == (32, 48)
    assert main(["data", "info", "folder", "--root", str(root), "--param", "image_size=16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_sizes_on_disk"] == {"48x32": 4}
    assert info["splits"]["train"]["with_mask"] == 1
    facts = file_facts(root / "train" / "a" / "photo.jpg")
    assert (facts["width"], facts["height"], facts["format"]) == (48, 32, "JPEG")

