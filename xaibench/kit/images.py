"""Reading image and mask files from users' folders into the arrays of the dataset contract.

Every failure to read a file (empty, truncated, corrupt, not an image, an unsupported pixel type) is a
``UserError`` naming the file. Truncated files are never half-read: PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
is left False (the default), and a file read while another library has set it True still raises here.

Pixels are returned as every viewer shows them: a file's EXIF orientation (a camera's or phone's rotation
tag, in JPEG, PNG, TIFF or WebP) is applied to images and masks alike, so a mask drawn on the displayed
image lines up with it, and sizes are the displayed sizes.

``read_rgb`` makes every file 8-bit RGB; ``xaibench.kit.rasters`` keeps every band of a TIFF or GeoTIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xaibench.errors import UserError

# PIL modes holding one integer channel wider than 8 bits, and the numpy dtype range they are scaled from.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


# EXIF orientations (2..8) that swap width and height: a transpose or a quarter turn
_QUARTER_TURNS = (5, 6, 7, 8)


def orientation(image) -> int:
    """The EXIF orientation of an opened ``PIL.Image`` (1, upright, when it has none or an invalid one)."""
    try:
        value = image.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
    except Exception:  # a damaged EXIF block: the pixels are read as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(image) -> tuple[int, int]:
    """(width, height) of an opened ``PIL.Image`` as viewers show it, its EXIF orientation applied, without
    decoding the pixels."""
    width, height = image.size
    return (height, width) if orientation(image) in _QUARTER_TURNS else (width, height)


def _check_file(path: Path) -> None:
    """``UserError`` naming ``path`` where it cannot be read or is empty."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{path}: cannot read this file ({exc.strerror or exc})") from None
    if size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes); replace it or remove it")


def open_image(path):
    """``PIL.Image`` of ``path`` with its pixels loaded and its EXIF orientation applied (the pixels as
    viewers show them), or ``UserError`` naming the file.

    Raises for an empty file, a file PIL cannot identify, and a truncated or corrupt one."""
    from PIL import Image, ImageFile, ImageOps

    path = Path(path)
    _check_file(path)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Another library switched PIL to padding truncated files with grey; that would hide broken data.
        raise UserError(f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by another library), so "
                        f"truncated images cannot be detected; set it back to False")
    try:
        image = Image.open(path)
        image.load()
        if orientation(image) != 1:
            ImageOps.exif_transpose(image, in_place=True)
    except Image.UnidentifiedImageError:
        raise UserError(f"{path}: not an image format that can be read (PNG, JPEG, TIFF, ...); replace it or "
                        f"remove it") from None
    except Image.DecompressionBombError as exc:  # a large orthophoto is not a damaged file
        raise UserError(f"{path}: too large to read whole ({exc}); if it is a real image (a whole orthophoto, "
                        f"say), cut it into tiles of the size you train on (e.g. gdal_retile.py) and point the "
                        f"dataset at the tiles") from None
    except Exception as exc:  # PIL's decoders raise OSError, SyntaxError, zlib.error, struct.error, ...
        raise UserError(f"{path}: cannot read this image, it is truncated or corrupt ({type(exc).__name__}: "
                        f"{exc}); replace it or remove it") from None
    return image


def _to_8bit(path, image) -> np.ndarray | None:
    """uint8 (H, W) pixels of a wide single-channel ``image`` (scaled, not clipped); None for other modes."""
    if image.mode in _WIDE_MODES:
        pixels = np.asarray(image)
        top = _WIDE_MODES[image.mode]
        if pixels.size and (pixels.min() < 0 or pixels.max() > top):
            raise UserError(f"{path}: 32-bit pixel values outside 0..{top} ({pixels.min()}..{pixels.max()}); "
                            f"save it as 8- or 16-bit")
        return ((pixels.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8)
    if image.mode == "F":
        raise UserError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
    return None


def read_rgb(path) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of the image file ``path``, as displayed (EXIF orientation applied).

    Grayscale (L, 1), palette (P), RGBA/LA (alpha dropped: transparent pixels keep their colour), CMYK and
    16-bit single-channel images (I;16, I: scaled by 255/65535, not clipped) are converted. Raises
    ``UserError`` naming the file when it is empty, truncated, corrupt or not a readable image."""
    with open_image(path) as image:
        wide = _to_8bit(path, image)
        if wide is not None:
            return np.ascontiguousarray(np.repeat(wide[..., None], 3, axis=-1))
        if image.mode == "P":
            image = image.convert("RGBA")  # palette transparency is resolved before the alpha is dropped
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _alpha(image) -> np.ndarray | None:
    """uint8 (H, W) alpha of ``image``, or None when it has no transparency."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))[..., 3]
    return None


def read_mask(path, *, size: tuple[int, int] | None = None, white_background: bool = False,
              image_path=None) -> np.ndarray:
    """bool (H, W) foreground of the mask file ``path``, as displayed (EXIF orientation applied): True on the
    annotated pixels.

    Foreground is every pixel whose stored value is not zero (any channel; a palette PNG's index), or with
    ``white_background`` every pixel that is not pure white (255, 255, 255 after 16-bit scaling); in both
    cases fully transparent pixels (alpha 0) are background. ``size`` (W, H), when given, is the size of
    the mask's image as displayed (``image_path``, named in the message): a mask of another size raises ``UserError``,
    as does a file that cannot be read."""
    path = Path(path)
    with open_image(path) as image:
        if size is not None and tuple(image.size) != tuple(size):
            of = f"its image {image_path}" if image_path is not None else "its image"
            raise UserError(f"{path}: mask is {image.size[0]}x{image.size[1]} but {of} is {size[0]}x{size[1]}; "
                            f"a mask has its image's size")
        alpha = _alpha(image)
        wide = _to_8bit(path, image)
        if white_background:
            if wide is not None:
                foreground = wide != 255
            else:
                rgb = np.asarray((image.convert("RGBA") if image.mode == "P" else image).convert("RGB"))
                foreground = (rgb != 255).any(axis=-1)
        elif wide is not None:
            foreground = np.asarray(image) != 0
        elif image.mode in ("P", "L", "1"):
            foreground = np.asarray(image) != 0
        else:
            channels = np.asarray(image.convert("RGB"))
            foreground = (channels != 0).any(axis=-1)
    if alpha is not None:
        foreground &= alpha != 0
    return np.ascontiguousarray(foreground, dtype=bool)
