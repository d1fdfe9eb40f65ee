"""``xaibench.kit.images``: every pixel type users' folders hold becomes uint8 RGB or a bool mask, and every file
that cannot be read is a ``UserError`` naming it. Fixtures are written by PIL in the real formats."""

import re

import numpy as np
import pytest
from PIL import Image, ImageFile

from xaibench.errors import UserError
from xaibench.kit.images import read_mask, read_rgb

RGB = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)


def save(path, pixels, mode=None, **kwargs):
    Image.fromarray(pixels, mode).save(path, **kwargs)
    return path


def test_rgb_png_and_jpeg(tmp_path):
    assert np.array_equal(read_rgb(save(tmp_path / "a.png", RGB)), RGB)
    jpeg = read_rgb(save(tmp_path / "a.jpg", RGB, quality=95))
    assert jpeg.dtype == np.uint8 and jpeg.shape == (6, 10, 3)


def test_grayscale_palette_and_rgba_become_rgb(tmp_path):
    gray = RGB[..., 0]
    out = read_rgb(save(tmp_path / "l.png", gray, "L"))
    assert out.shape == (6, 10, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))

    palette = Image.fromarray(RGB).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_rgb(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))

    alpha = np.zeros((6, 10), np.uint8)  # fully transparent: the colours must survive
    out = read_rgb(save(tmp_path / "rgba.png", np.dstack([RGB, alpha]), "RGBA"))
    assert np.array_equal(out, RGB)
    out = read_rgb(save(tmp_path / "la.png", np.dstack([gray, alpha]), "LA"))
    assert np.array_equal(out[..., 1], gray)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    wide = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as image:
        assert image.mode in ("I;16", "I")  # a real 16-bit PNG, however PIL names it
    out = read_rgb(tmp_path / "16.png")
    assert out.dtype == np.uint8 and out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_16_bit_tiff_is_scaled(tmp_path):
    wide = np.array([[0, 65535], [1000, 40000]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.tif")
    assert read_rgb(tmp_path / "16.tif")[..., 0].tolist() == [[0, 255], [4, 156]]


def truncated_png(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_jpeg(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def written(data: bytes):
    def make(path):
        path.write_bytes(data)
        return path

    return make


@pytest.mark.parametrize("make, words", [
    (written(b""), "empty"),
    (truncated_png, "truncated or corrupt"),
    (truncated_jpeg, "truncated or corrupt"),
    (written(b"name,label\na,1\n"), "not an image"),
    (written(b"\x89PNG\r\n\x1a\n not really"), "not an image"),
])
@pytest.mark.parametrize("reader", [read_rgb, read_mask])
def test_unreadable_files_are_user_errors_naming_the_file(tmp_path, make, words, reader):
    path = make(tmp_path / "bad.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + words):
        reader(path)


def test_truncated_files_are_refused_even_if_another_library_allows_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = truncated_png(tmp_path / "cut.png")
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*LOAD_TRUNCATED_IMAGES"):
        read_rgb(path)


def test_mask_foreground_is_non_zero_and_not_transparent(tmp_path):
    values = np.array([[0, 1, 255], [0, 0, 7]], np.uint8)
    assert read_mask(save(tmp_path / "l.png", values, "L")).tolist() == [[False, True, True], [False, False, True]]
    wide = (values.astype(np.uint16) * 257)
    Image.fromarray(wide).save(tmp_path / "16.png")
    assert np.array_equal(read_mask(tmp_path / "16.png"), values != 0)
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = 255  # only the first row is opaque
    assert read_mask(save(tmp_path / "rgba.png", rgba, "RGBA")).tolist() == [[True] * 3, [False] * 3]


def test_white_background_masks(tmp_path):
    pixels = np.full((2, 3, 3), 255, np.uint8)
    pixels[0, 0] = (10, 200, 30)
    pixels[1, 2] = (255, 255, 254)
    expected = [[True, False, False], [False, False, True]]
    assert read_mask(save(tmp_path / "m.png", pixels), white_background=True).tolist() == expected
    assert read_mask(tmp_path / "m.png").all()  # without the flag, white is foreground too
    Image.fromarray(pixels).quantize(colors=4).save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png", white_background=True).tolist() == expected


def test_mask_of_another_size_names_both_files(tmp_path):
    mask = save(tmp_path / "mask.png", np.zeros((6, 9), np.uint8), "L")
    image = tmp_path / "image.jpg"
    with pytest.raises(UserError, match=re.escape(f"{mask}: mask is 9x6 but its image {image} is 10x6")):
        read_mask(mask, size=(10, 6), image_path=image)
    assert read_mask(mask, size=(9, 6)).shape == (6, 9)
