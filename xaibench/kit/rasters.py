"""Reading every band of raster files (TIFF and GeoTIFF: multispectral imagery, red, green, blue,
near-infrared, 8- or 16-bit, float reflectance) into the arrays of the dataset contract.

``read_bands`` reads a TIFF's bands with rasterio (PIL where rasterio is missing and PIL can) and other
formats as ``xaibench.kit.images.read_rgb`` does; ``scale_bands`` and ``resize_bands`` turn its pixels into a
dataset's images (uint8, or float32 in [0, 1]). As in ``xaibench.kit.images``, every failure to read a file is
a ``UserError`` naming it, and pixels are returned as displayed (the TIFF orientation tag applied).
"""

from __future__ import annotations

import dataclasses
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Literal

import numpy as np

from xaibench.errors import UserError
from xaibench.kit.images import _check_file, open_image, read_rgb

TIFF_SUFFIXES = (".tif", ".tiff")
_GEO_HINT = "install the geo extra: pip install 'xaibench[geo]'"
# (H, W, ...) pixels as displayed, per TIFF/EXIF orientation: what ImageOps.exif_transpose does to an image
_TRANSPOSE = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.swapaxes(0, 1),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (a quarter turn clockwise)
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}
# PIL modes of the TIFFs PIL reads without rasterio: (numpy dtype, colour interpretation of each band)
_PIL_TIFF_MODES = {"RGB": ("uint8", ("red", "green", "blue")), "RGBA": ("uint8", ("red", "green", "blue", "alpha")),
                   "L": ("uint8", ("gray",)), "I;16": ("uint16", ("gray",)), "I;16L": ("uint16", ("gray",)),
                   "I;16B": ("uint16", ("gray",)), "I;16N": ("uint16", ("gray",)), "I": ("int32", ("gray",)),
                   "F": ("float32", ("gray",))}


@dataclasses.dataclass(frozen=True)
class BandInfo:
    """What an image file says about its bands, read from its header.

    ``count``: the file's bands, alpha included; bands are numbered 1..count, as GDAL numbers them.
    ``dtype``: the numpy dtype name of its pixels (``uint8``, ``uint16``, ``int16``, ``float32``, ...).
    ``descriptions``: each band's description, or None. ``colour``: each band's colour interpretation,
    GDAL's name in lower case (``red``, ``green``, ``blue``, ``gray``, ``alpha``, ``undefined``, ...).
    ``nodata``: each band's no-data value, or None."""

    count: int
    dtype: str
    descriptions: tuple[str | None, ...]
    colour: tuple[str, ...]
    nodata: tuple[float | None, ...]

    @property
    def image_bands(self) -> tuple[int, ...]:
        """The 1-based indices of the bands other than alpha (transparency is not an image band)."""
        return tuple(i + 1 for i, colour in enumerate(self.colour) if colour != "alpha")

    @property
    def family(self) -> str:
        """``float`` for floating-point pixels, else the dtype: files of one family are scaled alike."""
        return "float" if np.dtype(self.dtype).kind == "f" else self.dtype


# What read_rgb gives, three uint8 bands: every file that is not a TIFF, and palette TIFFs.
RGB_FILE = BandInfo(3, "uint8", (None,) * 3, ("red", "green", "blue"), (None,) * 3)


def _rasterio():
    """The rasterio module, or None where it is not installed."""
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def is_tiff(path) -> bool:
    """Whether ``read_bands`` reads ``path`` as a TIFF, band by band (by its suffix, .tif or .tiff)."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def band_info(path) -> BandInfo:
    """The bands of the image file ``path``, as ``read_bands`` reads them, from its header: a TIFF's own
    (``RGB_FILE`` for a palette TIFF), and for any other format ``RGB_FILE`` without opening the file.
    Raises ``UserError`` naming the file where its header cannot be read."""
    path = Path(path)
    if not is_tiff(path):
        return RGB_FILE
    rasterio = _rasterio()
    if rasterio is None:
        return _pil_tiff_info(path)
    with _open_raster(rasterio, path) as src:
        return _raster_info(path, src)


def read_bands(path, indexes=None) -> tuple[np.ndarray, np.ndarray | None, BandInfo]:
    """``(pixels, nodata, info)`` of the image file ``path``, as displayed (its EXIF or TIFF orientation
    applied, as ``open_image`` does).

    ``pixels``: (H, W, N) in the file's own dtype, one channel per band of ``indexes`` (1-based file band
    numbers, in that order; default ``info.image_bands``, every band but alpha). ``nodata``: bool (H, W, N),
    True where a pixel equals its band's no-data value or is NaN, or None where no pixel is either.
    ``info``: the file's ``band_info``.

    TIFFs (.tif, .tiff) are read with rasterio, every band of any integer or float type (a palette TIFF
    as its colours, and an 8-bit red-green-blue one, alpha aside, through ``read_rgb`` as before bands
    existed; an 8-bit RGB TIFF's unflagged fourth band counts as its alpha); without rasterio, PIL reads 8-bit RGB(A), grey, 16-bit, 32-bit
    integer and float TIFFs, and any other is a ``UserError`` saying to install the geo extra. Other
    formats are read by ``read_rgb`` (three uint8 bands). Raises ``UserError`` naming the file where it is
    empty, truncated, corrupt, not an image, or lacks a band of ``indexes``."""
    path = Path(path)
    if not is_tiff(path):
        info = RGB_FILE
        pixels = read_rgb(path)
    elif _is_rgb_tiff(info := band_info(path), indexes):
        pixels = read_rgb(path)  # PIL's decoders (JPEG-in-TIFF's YCbCr among them): the pixels it always gave
    else:
        rasterio = _rasterio()
        if rasterio is None:
            info = _pil_tiff_info(path)
            pixels = _pil_tiff_pixels(path, info)
        else:
            with _open_raster(rasterio, path) as src:
                info = _raster_info(path, src)
                pixels = _raster_pixels(rasterio, path, src, info)
    chosen = _chosen(path, info, indexes)
    if chosen != tuple(range(1, pixels.shape[-1] + 1)):
        pixels = np.ascontiguousarray(pixels[..., [i - 1 for i in chosen]])
    return pixels, _nodata_mask(pixels, [info.nodata[i - 1] for i in chosen]), info


def _is_rgb_tiff(info: BandInfo, indexes) -> bool:
    """Whether a TIFF is read as ``read_rgb`` reads it: 8-bit red, green and blue in bands 1 to 3 (alpha
    aside), of which only those are asked for."""
    chosen = info.image_bands if indexes is None else tuple(int(i) for i in indexes)
    return (info.dtype == "uint8" and info.colour[:3] == ("red", "green", "blue") and info.image_bands == (1, 2, 3)
            and all(1 <= i <= 3 for i in chosen))


def _chosen(path: Path, info: BandInfo, indexes) -> tuple[int, ...]:
    chosen = info.image_bands if indexes is None else tuple(int(i) for i in indexes)
    beyond = [i for i in chosen if not 1 <= i <= info.count]
    if beyond:
        raise UserError(f"{path}: has {info.count} band(s), so there is no band {beyond[0]}; bands are numbered "
                        f"1 to {info.count}")
    return chosen


def _open_raster(rasterio, path: Path):
    """The opened rasterio dataset of ``path``, or a ``UserError`` naming it."""
    from PIL import Image

    _check_file(path)
    try:
        with warnings.catch_warnings():  # a plain TIFF (a scan, a photo) is an image without a map position
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(path)
    except rasterio.errors.RasterioError as exc:
        raise UserError(f"{path}: cannot read this image, it is truncated, corrupt or not a TIFF ({exc}); replace "
                        f"it or remove it") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and src.width * src.height > 2 * limit:  # where PIL's decompression-bomb check stops
        src.close()
        raise UserError(f"{path}: too large to read whole ({src.width}x{src.height} pixels); if it is a real image "
                        f"(a whole orthophoto, say), cut it into tiles of the size you train on (e.g. "
                        f"gdal_retile.py) and point the dataset at the tiles")
    return src


def _raster_info(path: Path, src) -> BandInfo:
    colour = tuple(c.name.lower() for c in src.colorinterp)
    if colour == ("palette",):
        return RGB_FILE
    if len(set(src.dtypes)) != 1:
        raise UserError(f"{path}: its bands have different pixel types ({', '.join(src.dtypes)}); save every band "
                        f"with one type")
    dtype = src.dtypes[0]
    if np.dtype(dtype).kind not in "uif":
        raise UserError(f"{path}: {dtype} pixels cannot be read as an image; save it as integers (8- or 16-bit) "
                        f"or floats")
    descriptions = tuple(d or None for d in src.descriptions)
    nodata = tuple(None if v is None else float(v) for v in src.nodatavals)
    if dtype == "uint8" and colour == ("red", "green", "blue", "undefined"):
        # An RGB TIFF's unflagged fourth band is its transparency (the layout of most 8-bit aerial tiles, and
        # what PIL reads it as); give bands: [1, 2, 3, 4] to use it as an image band anyway.
        colour = ("red", "green", "blue", "alpha")
    return BandInfo(src.count, dtype, descriptions, colour, nodata)


def _raster_pixels(rasterio, path: Path, src, info: BandInfo) -> np.ndarray:
    """(H, W, count) pixels of every band of ``src``, as displayed."""
    if info is RGB_FILE:  # a palette TIFF: its colours, as read_rgb has always given them
        return read_rgb(path)
    try:
        pixels = np.moveaxis(src.read(), 0, -1)
    except rasterio.errors.RasterioError as exc:
        detail = exc.__cause__ or exc  # GDAL's own error, where rasterio says "see previous exception"
        raise UserError(f"{path}: cannot read this image, it is truncated or corrupt ({detail}); replace it or "
                        f"remove it") from None
    turn = _TRANSPOSE.get(_tiff_orientation(path))
    return pixels if turn is None else turn(pixels)


def _tiff_orientation(path: Path) -> int:
    """The orientation tag (274, EXIF's) of the first image of the TIFF ``path``, 1 where it has none: GDAL
    reads pixels as stored, so the turn that PIL applies is applied here."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as handle:
            header = handle.read(8)
            if header[2:4] in (b"\x00\x2b", b"\x2b\x00"):  # BigTIFF: a 16-byte header
                header += handle.read(8)
            directory = TiffImagePlugin.ImageFileDirectory_v2(header)
            handle.seek(directory.next)
            directory.load(handle)
            value = directory.get(274, 1)
    except Exception:  # a damaged header: the pixels are read as stored (or refused by rasterio)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pil_tiff_info(path: Path) -> BandInfo:
    """``band_info`` of a TIFF without rasterio: the TIFF modes PIL reads as they are, or a ``UserError``
    saying to install the geo extra."""
    from PIL import Image

    _check_file(path)
    try:
        with Image.open(path) as image:
            mode, tags = image.mode, dict(getattr(image, "tag_v2", {}))
    except Exception as exc:  # PIL cannot identify the TIFF's pixel layout (several 16-bit bands, say)
        raise UserError(f"{path}: reading this TIFF needs rasterio, as PIL cannot ({type(exc).__name__}: {exc}); "
                        f"{_GEO_HINT}") from None
    if mode == "P":
        return RGB_FILE
    if mode not in _PIL_TIFF_MODES:
        raise UserError(f"{path}: reading this TIFF ({mode} pixels) band by band needs rasterio; {_GEO_HINT}")
    dtype, colour = _PIL_TIFF_MODES[mode]
    count = len(colour)
    try:  # GDAL's own tags: the no-data value, and band descriptions in its metadata
        nodata = float(str(tags.get(42113)).strip("\x00 ")) if 42113 in tags else None
    except ValueError:
        nodata = None
    descriptions: list[str | None] = [None] * count
    try:
        for item in ElementTree.fromstring(str(tags.get(42112, "<GDALMetadata/>")).strip("\x00 ")):
            sample = int(item.get("sample", -1))
            if item.get("role") == "description" and 0 <= sample < count and item.text:
                descriptions[sample] = item.text
    except (ElementTree.ParseError, ValueError):
        pass
    return BandInfo(count, dtype, tuple(descriptions), colour, (nodata,) * count)


def _pil_tiff_pixels(path: Path, info: BandInfo) -> np.ndarray:
    if info is RGB_FILE:
        return read_rgb(path)
    with open_image(path) as image:
        pixels = np.asarray(image)
    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)  # I;16B is big-endian
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _nodata_mask(pixels: np.ndarray, values: list[float | None]) -> np.ndarray | None:
    """bool (H, W, N): pixels equal to their band's no-data value (cast to a float band's type), or NaN;
    None where there is none."""
    if pixels.dtype.kind != "f" and all(value is None for value in values):
        return None
    mask = np.isnan(pixels) if pixels.dtype.kind == "f" else np.zeros(pixels.shape, bool)
    for band, value in enumerate(values):
        if value is not None and not np.isnan(value):
            target = pixels.dtype.type(value) if pixels.dtype.kind == "f" else value
            mask[..., band] |= pixels[..., band] == target
    return mask if mask.any() else None


def default_band_names(info: BandInfo, indexes) -> list[str]:
    """Names of the bands ``indexes`` (1-based) of a file: its band descriptions where every one of them
    has one, all distinct; else its colour interpretations where those are distinct and none is undefined
    (``red``, ``green``, ``blue``, ``gray``, ...); else ``band <number>`` (``band 1``, ``band 4``, ...)."""
    descriptions = [info.descriptions[i - 1] for i in indexes]
    if all(descriptions) and len(set(descriptions)) == len(descriptions):
        return descriptions
    colours = [info.colour[i - 1] for i in indexes]
    if "undefined" not in colours and len(set(colours)) == len(colours):
        return colours
    return [f"band {i}" for i in indexes]


# -- a dataset's ``scale`` parameter: how its pixels become [0, 1] ------------------------------------------

# Its annotation: ``dtype`` (by the pixels' type, ``scale_bands``), one [low, high] for every band, or one per band
Scale = Literal["dtype"] | tuple[float, float] | list[tuple[float, float]]


def _is_pair(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)


def scale_problem(scale) -> str | None:
    """What is wrong with a ``scale`` parameter on its own (a pair with low >= high, say), or None."""
    if scale == "dtype":
        return None
    pairs = [scale] if _is_pair(scale) else list(scale) if isinstance(scale, (list, tuple)) else []
    if not pairs or not all(_is_pair(p) and np.isfinite(p).all() and p[0] < p[1] for p in pairs):
        return f"give dtype, [low, high] or one [low, high] per band, each with low < high, got {scale}"
    return None


def normal_scale(scale):
    """A valid ``scale`` as plain data: ``"dtype"``, ``[low, high]`` or ``[[low, high], ...]``, floats."""
    if scale == "dtype":
        return "dtype"
    if _is_pair(scale):
        return [float(v) for v in scale]
    return [[float(v) for v in pair] for pair in scale]


def scale_ranges(scale, count: int) -> tuple[tuple[float, float], ...] | None:
    """The (low, high) of each of ``count`` bands that a valid ``scale`` asks for, as ``scale_bands`` takes
    them: None for ``dtype``, one pair for every band, or the pairs given, one per band; ``ValueError``
    where those are not ``count``."""
    if scale == "dtype":
        return None
    if _is_pair(scale):
        return (tuple(float(v) for v in scale),) * count
    if len(scale) != count:
        raise ValueError(f"{len(scale)} [low, high] pairs for {count} band{'s' * (count != 1)}; give one pair for "
                         f"all bands or one per band")
    return tuple(tuple(float(v) for v in pair) for pair in scale)


def scale_bands(pixels: np.ndarray, nodata: np.ndarray | None, ranges, path) -> np.ndarray:
    """A dataset image from ``pixels`` (H, W, N) and ``nodata`` as ``read_bands`` gives them: uint8 (read as
    value / 255) where the pixels are uint8 and ``ranges`` is None, else float32 in [0, 1].

    ``ranges`` None scales by the dtype: unsigned integers are divided by their type's maximum (255, 65535,
    ...; uint8 pixels stay as they are), float pixels are taken as already in [0, 1], and a float value
    outside [0, 1] is a ``UserError`` naming ``path`` and the range found (give ranges); signed integers
    have no such range and need ranges. ``ranges``: one ``(low, high)`` per band, low < high: a value v
    becomes (v - low) / (high - low), clipped to [0, 1] (below low is 0, above high is 1). No-data pixels
    (``nodata`` True) are 0 in their band after scaling: never NaN. uint8 pixels without no-data are
    returned as they are (the same array)."""
    kind = pixels.dtype.kind
    if ranges is None and pixels.dtype == np.uint8 and nodata is None:
        return pixels
    missing = nodata if nodata is not None else np.zeros(pixels.shape, bool)
    if ranges is not None:
        low = np.array([r[0] for r in ranges], np.float64)
        high = np.array([r[1] for r in ranges], np.float64)
        with np.errstate(invalid="ignore"):
            image = np.clip((pixels.astype(np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    elif pixels.dtype == np.uint8:
        image = pixels.copy()
    elif kind == "u":
        image = (pixels.astype(np.float64) / np.iinfo(pixels.dtype).max).astype(np.float32)
    elif kind == "i":
        raise UserError(f"{path}: signed {pixels.dtype} pixels have no natural range to scale into [0, 1]; give "
                        f"the range of the data as scale: [low, high] (e.g. scale: [0, 10000] for reflectance "
                        f"stored as 0-10000)")
    else:
        found = pixels[~missing]
        if found.size and not (np.isfinite(found).all() and found.min() >= 0 and found.max() <= 1):
            raise UserError(f"{path}: float pixel values range over [{found.min():g}, {found.max():g}], not [0, 1]; "
                            f"give the range to scale from as scale: [low, high] (e.g. scale: [0, 10000] for "
                            f"reflectance stored as 0-10000), or mark the values that are no data with the "
                            f"file's nodata value")
        image = pixels.astype(np.float32)
    image[missing] = 0
    return image


def resize_bands(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, N), uint8 or float32 in [0, 1], resized to ``size`` (width, height) band by band
    with PIL's bilinear filter: a uint8 band as a mode "L" image (three bands as one RGB image, which gives
    exactly the same pixels, in one pass), a float32 band as a mode "F" image, clipped to [0, 1] against
    rounding. Returns (height, width, N) of the same dtype."""
    from PIL import Image

    if image.dtype == np.uint8 and image.shape[-1] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BILINEAR), dtype=np.uint8)
    if image.dtype == np.uint8:
        bands = [np.asarray(Image.fromarray(image[..., i]).resize(size, Image.BILINEAR)) for i in
                 range(image.shape[-1])]
        return np.ascontiguousarray(np.stack(bands, axis=-1), dtype=np.uint8)
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., i], np.float32), "F").resize(
        size, Image.BILINEAR)) for i in range(image.shape[-1])]
    return np.clip(np.stack(bands, axis=-1), 0.0, 1.0).astype(np.float32)
