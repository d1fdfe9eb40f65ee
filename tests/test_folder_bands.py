"""The ``folder`` dataset on multispectral folders: every band of a TIFF or GeoTIFF is read (4-band 16-bit,
float with no-data, 8-bit RGB), selected, ordered, scaled and named as documented, while PNG, JPEG and 8-bit
RGB TIFF folders give exactly the samples they gave before bands existed. Fixtures are written here in the
real formats: GeoTIFFs with a CRS, a transform and band descriptions (rasterio), PNG, JPEG and TIFF (PIL)."""

import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from xaibench import create
from xaibench.commands.cli import main
from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.contracts import Bands, validate_sample
from xaibench.kit.images import read_rgb
from xaibench.kit.rasters import read_bands, scale_bands
from xaibench.kit.testing import check_component

rasterio = pytest.importorskip("rasterio")

SIZE = 32  # tiles are SIZE x SIZE; image_size SIZE keeps the pixels as they are
CLASSES = ("field", "forest")
NAMES = ("red", "green", "blue", "nir")


def reflectance(seed, bands=4, size=SIZE):
    """uint16 (bands, size, size) 0-12000, reflectance-like (above 10000 happens: bright roofs)."""
    return np.random.default_rng(seed).integers(0, 12001, (bands, size, size)).astype(np.uint16)


def write_geotiff(path, data, *, descriptions=NAMES, nodata=None, **options):
    """``data`` (bands, H, W) as a GeoTIFF in EPSG:2193 at 0.5 m, with band descriptions."""
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:2193", transform=from_origin(1_800_000, 5_800_000, 0.5, 0.5),
                       nodata=nodata, **options) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def write_folder(root, make, suffix=".tif", n_train=2, n_test=1):
    """``root/{train,test}/{field,forest}/NN<suffix>``, each written by ``make(path, seed)``; returns
    {relative path: seed}."""
    seeds = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed = len(seeds)
                make(root / split / name / f"{i:02d}{suffix}", seed)
                seeds[f"{split}/{name}/{i:02d}{suffix}"] = seed
    return seeds


def four_band_folder(root, **options):
    return write_folder(root, lambda path, seed: write_geotiff(path, reflectance(seed), **options))


def folder(root, image_size=SIZE, **params):
    return create("datasets", "folder", root=str(root), image_size=image_size, **params)


def samples(dataset):
    return {s.id: s for split in ("train", "val", "test") for s in dataset.split(split)}


# -- every band of a 4-band 16-bit GeoTIFF ------------------------------------------------------------------


def test_every_band_of_a_16_bit_geotiff_is_read_scaled_by_its_dtype(tmp_path):
    seeds = four_band_folder(tmp_path / "d")
    dataset = folder(tmp_path / "d")
    assert dataset.image_bands == Bands(NAMES, (0, 1, 2))  # names from the band descriptions
    got = samples(dataset)
    assert sorted(got) == sorted(seeds)
    for sample in got.values():
        validate_sample(sample, len(CLASSES), dataset.image_bands)
    check_component("datasets", "folder", root=str(tmp_path / "d"), image_size=16, scale=[0, 10000])
    sample = got["train/forest/01.tif"]
    data = reflectance(seeds["train/forest/01.tif"])
    assert sample.image.shape == (SIZE, SIZE, 4) and sample.image.dtype == np.float32
    for row, col in ((0, 0), (5, 17), (31, 31)):
        for band in range(4):
            assert sample.image[row, col, band] == np.float32(data[band, row, col] / 65535)


def test_scale_maps_low_high_to_0_1_and_clips_outside(tmp_path):
    seeds = four_band_folder(tmp_path / "d")
    data = reflectance(seeds["test/field/00.tif"])
    image = samples(folder(tmp_path / "d", scale=[0, 10000]))["test/field/00.tif"].image
    np.testing.assert_array_equal(image, np.clip(np.moveaxis(data, 0, -1) / 10000, 0, 1).astype(np.float32))
    bright = np.argwhere(data[3] > 10000)[0]
    assert image[bright[0], bright[1], 3] == 1.0  # clipped, not 1.2
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() == 1

    per_band = [[0, 10000], [0, 10000], [1000, 11000], [0, 5000]]
    image = samples(folder(tmp_path / "d", scale=per_band))["test/field/00.tif"].image
    for band, (low, high) in enumerate(per_band):
        expected = np.clip((data[band].astype(np.float64) - low) / (high - low), 0, 1).astype(np.float32)
        np.testing.assert_array_equal(image[..., band], expected)
    assert (image[..., 2][data[2] < 1000] == 0).all()  # below low: 0
    wide = np.array([[[0, 500, 10000, 12000]]], np.uint16).reshape(1, 1, 4)
    assert scale_bands(wide, None, [(0, 10000), (1000, 2000), (0, 10000), (0, 10000)], "x").tolist() == [
        [[0.0, 0.0, 1.0, 1.0]]]


def test_bands_select_and_order_and_rgb_names_the_composite(tmp_path):
    seeds = four_band_folder(tmp_path / "d")
    data = reflectance(seeds["train/field/00.tif"])
    dataset = folder(tmp_path / "d", bands=[4, 1])
    image = samples(dataset)["train/field/00.tif"].image
    assert image.shape == (SIZE, SIZE, 2)
    np.testing.assert_array_equal(image[..., 0], (data[3] / 65535).astype(np.float32))
    np.testing.assert_array_equal(image[..., 1], (data[0] / 65535).astype(np.float32))
    assert dataset.image_bands == Bands(("nir", "red"), (0, 0, 0))  # fewer than three bands: the first as grey

    dataset = folder(tmp_path / "d", bands=[4, 1, 2, 3], rgb=[1, 2, 3])
    assert dataset.image_bands == Bands(("nir", "red", "green", "blue"), (1, 2, 3))
    assert dataset.image_bands.others == (0,)
    false_colour = folder(tmp_path / "d", rgb=[4, 1, 2])
    assert false_colour.image_bands == Bands(NAMES, (3, 0, 1))
    sample = samples(false_colour)["train/field/00.tif"]
    np.testing.assert_array_equal(false_colour.image_bands.composite(sample.image[None])[0, ..., 0],
                                  np.rint(data[3] / 65535 * 255).astype(np.uint8))


def test_band_names_come_from_descriptions_colours_or_numbers(tmp_path):
    four_band_folder(tmp_path / "plain", descriptions=None)
    assert folder(tmp_path / "plain").image_bands.names == ("band 1", "band 2", "band 3", "band 4")
    assert folder(tmp_path / "plain", bands=[4, 2]).image_bands.names == ("band 4", "band 2")
    named = folder(tmp_path / "plain", band_names=["r", "g", "b", "n"])
    assert named.image_bands == Bands(("r", "g", "b", "n"), (0, 1, 2))
    # colour interpretations where the file has them: an RGB GeoTIFF is an RGB dataset
    write_folder(tmp_path / "rgb", lambda path, seed: write_geotiff(
        path, np.random.default_rng(seed).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8), descriptions=None,
        photometric="RGB"))
    assert folder(tmp_path / "rgb").image_bands == Bands.rgb3()
    # one used band without a description: the colour interpretations don't name 4 bands either
    four_band_folder(tmp_path / "part", descriptions=("red", "green", "blue", ""))
    assert folder(tmp_path / "part").image_bands.names == ("band 1", "band 2", "band 3", "band 4")
    assert folder(tmp_path / "part", bands=[2, 1]).image_bands.names == ("green", "red")


# -- no data ------------------------------------------------------------------------------------------------


def test_nodata_and_nan_become_0_and_are_counted(tmp_path):
    def make(path, seed):
        data = np.random.default_rng(seed).uniform(0, 1, (4, SIZE, SIZE)).astype(np.float32)
        if "forest" in path.parts and "train" in path.parts:
            data[:, :4, :] = -9999.0  # a no-data strip across every band: 4 of 32 rows
            data[3, 10, 10] = np.nan  # and one NaN in the near-infrared band
        write_geotiff(path, data, nodata=-9999.0)

    write_folder(tmp_path / "d", make)
    dataset = folder(tmp_path / "d")
    got = samples(dataset)
    for sample in got.values():
        assert sample.image.dtype == np.float32 and np.isfinite(sample.image).all()
    image = got["train/forest/00.tif"].image
    assert (image[:4] == 0).all() and image[10, 10, 3] == 0 and image[10, 10, 0] > 0
    assert (image[4:] > 0).mean() > 0.99  # elsewhere the data (uniform, so 0 is all but impossible)
    details = dataset.describe()
    assert details["nodata_images"] == {"train": 2, "val": 0, "test": 0}
    assert details["nodata_share"]["train"] == pytest.approx((4 * SIZE + 1) * 2 / (4 * SIZE * SIZE))
    assert details["nodata_share"]["test"] == 0.0
    json.dumps(details)

    pixels, nodata, info = read_bands(tmp_path / "d" / "train" / "forest" / "00.tif")
    assert pixels.dtype == np.float32 and info.nodata == (-9999.0,) * 4 and info.family == "float"
    assert nodata.shape == (SIZE, SIZE, 4) and nodata.sum() == 4 * 4 * SIZE + 1


def test_float_values_outside_0_1_without_scale_name_the_file_and_range(tmp_path):
    write_folder(tmp_path / "d", lambda path, seed: write_geotiff(
        path, np.random.default_rng(seed).uniform(0, 0.9, (4, SIZE, SIZE)).astype(np.float32)))
    outside = tmp_path / "d" / "test" / "forest" / "00.tif"
    data = np.random.default_rng(0).uniform(0, 0.9, (4, SIZE, SIZE)).astype(np.float32)
    data[1, 3, 3] = 1.5
    write_geotiff(outside, data)
    with pytest.raises(UserError, match=re.escape(str(outside)) + r".*\[0(\.\d+)?, 1\.5\], not \[0, 1\].*"
                                        r"scale: \[low, high\]"):
        samples(folder(tmp_path / "d"))
    image = samples(folder(tmp_path / "d", scale=[0, 2]))["test/forest/00.tif"].image
    assert image[3, 3, 1] == 0.75


def test_signed_integers_need_a_scale(tmp_path):
    write_folder(tmp_path / "d", lambda path, seed: write_geotiff(
        path, np.random.default_rng(seed).integers(-500, 10000, (4, SIZE, SIZE)).astype(np.int16)))
    with pytest.raises(UserError, match=r"signed int16 pixels .* scale: \[low, high\]"):
        folder(tmp_path / "d").check()
    image = samples(folder(tmp_path / "d", scale=[0, 10000]))["train/field/00.tif"].image
    assert image.dtype == np.float32 and image.min() == 0 and image.max() <= 1


# -- files unlike the others, and parameters that do not fit ----------------------------------------------


def test_a_file_with_other_bands_is_an_error_naming_it(tmp_path):
    four_band_folder(tmp_path / "d")
    odd = tmp_path / "d" / "train" / "forest" / "01.tif"
    write_geotiff(odd, reflectance(9, bands=3), descriptions=NAMES[:3])
    with pytest.raises(UserError, match=re.escape(f"{odd}: has 3 bands of uint16 pixels, but 5 other image(s) "
                                                  f"of this folder dataset have 4 bands of uint16 pixels")):
        folder(tmp_path / "d").split("train")
    skipping = folder(tmp_path / "d", on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 unreadable file"):
        assert "train/forest/01.tif" not in {s.id for s in skipping.split("train")}
    assert skipping.describe()["skipped_files"][0]["file"] == "train/forest/01.tif"

    write_geotiff(odd, reflectance(9).astype(np.float32) / 12000)  # 4 bands, but float
    with pytest.raises(UserError, match=re.escape(f"{odd}: has 4 bands of float pixels, but 5 other")):
        folder(tmp_path / "d").check()
    skipping = folder(tmp_path / "d", on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 unreadable file"):
        assert "train/forest/01.tif" not in {s.id for s in skipping.split("train")}
    assert "4 bands of float pixels" in skipping.describe()["skipped_files"][0]["error"]
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(odd.with_suffix(".png"))  # a PNG: 3 uint8 bands
    odd.unlink()
    with pytest.raises(UserError, match=re.escape(f"{odd.with_suffix('.png')}: has 3 bands of uint8 pixels")):
        folder(tmp_path / "d").check()


def truncate(path):
    write_geotiff(path, reflectance(7, size=64), descriptions=None)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # the header survives, strips do not


BAD_TIFFS = {
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "not an image": (lambda p: p.write_text("<html>404</html>"), "truncated, corrupt or not a TIFF"),
    "truncated": (truncate, "truncated or corrupt .*TIFFReadEncodedStrip"),
}


@pytest.mark.parametrize("case", BAD_TIFFS)
def test_an_unreadable_tiff_is_an_error_naming_it_or_skipped(tmp_path, case):
    four_band_folder(tmp_path / "d")
    bad = tmp_path / "d" / "test" / "field" / "00.tif"
    make, words = BAD_TIFFS[case]
    make(bad)
    with pytest.raises(UserError, match=re.escape(str(bad)) + ": .*" + words):
        samples(folder(tmp_path / "d"))
    skipping = folder(tmp_path / "d", on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\) in split 'test': test/field/00.tif"):
        assert len(skipping.split("test")) == 1
    assert skipping.image_bands == Bands(NAMES, (0, 1, 2))


@pytest.mark.parametrize("params,where,words", [
    ({"bands": [1, 2], "rgb": [1, 2, 3]}, "rgb", r"\[3\], which are not in bands"),
    ({"bands": [1, 2, 4], "scale": [[0, 1], [0, 1]]}, "scale", "2 .low, high. pairs for 3 bands"),
    ({"scale": [10000, 0]}, "scale", "low < high"),
    ({"bands": [1, 1]}, "bands", "each band number once"),
    ({"bands": [0]}, "bands", "greater than or equal to 1"),
    ({"rgb": [1, 2]}, "rgb", "at least 3"),
    ({"bands": [4, 1], "band_names": ["nir"]}, "band_names", "1 names for the 2 bands"),
    ({"band_names": ["a", "a", "b", "c"]}, "band_names", "distinct"),
    ({"scale": "minmax"}, "scale", ""),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_band_parameters_are_parameter_errors(tmp_path, params, where, words):
    with pytest.raises(ComponentParamsError, match=where + ".*" + words):
        folder(tmp_path, **params)


@pytest.mark.parametrize("params,words", [
    ({"bands": [1, 5]}, r"bands: band 5 asked for, but .*00\.tif has 4 band\(s\), numbered 1 to 4"),
    ({"rgb": [1, 2, 5]}, r"rgb: band 5 is not one of the bands used, \[1, 2, 3, 4\]"),
    ({"bands": [4, 5, 6]}, r"band 5 asked for"),
    ({"scale": [[0, 1], [0, 1]]}, r"scale: 2 \[low, high\] pairs for 4 bands"),
    ({"band_names": ["a", "b"]}, r"band_names: 2 names for 4 bands"),
])
def test_parameters_that_do_not_fit_the_files_are_user_errors(tmp_path, params, words):
    four_band_folder(tmp_path / "d")
    with pytest.raises(UserError, match=words):
        folder(tmp_path / "d", **params).check()


def test_a_composite_needs_bands_1_2_3_or_an_rgb(tmp_path):
    four_band_folder(tmp_path / "d")
    with pytest.raises(UserError, match=r"rgb: the bands used, \[2, 3, 4\] do not include bands 1, 2 and 3"):
        folder(tmp_path / "d", bands=[2, 3, 4]).image_bands
    assert folder(tmp_path / "d", bands=[2, 3, 4], rgb=[4, 3, 2]).image_bands.rgb == (2, 1, 0)


# -- RGB folders stay as they were -------------------------------------------------------------------------


def before_bands(path, size):
    """What the folder dataset gave before bands existed: read_rgb, then one PIL bilinear resize."""
    return np.asarray(Image.fromarray(read_rgb(path)).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def rgb8(seed, height=40, width=28):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


RGB_WRITERS = {
    "png": (".png", lambda path, seed: Image.fromarray(rgb8(seed)).save(path)),
    "rgba-png": (".png", lambda path, seed: Image.fromarray(
        np.dstack([rgb8(seed), np.full((40, 28), seed * 20, np.uint8)]), "RGBA").save(path)),
    "jpeg": (".jpg", lambda path, seed: Image.fromarray(rgb8(seed)).save(path, quality=90)),
    "tiff": (".tif", lambda path, seed: Image.fromarray(rgb8(seed)).save(path, compression="tiff_lzw")),
    "rgba-tiff": (".tiff", lambda path, seed: Image.fromarray(
        np.dstack([rgb8(seed), np.full((40, 28), 128, np.uint8)]), "RGBA").save(path)),
    "palette-tiff": (".tif", lambda path, seed: Image.fromarray(rgb8(seed)).quantize(colors=16).save(path)),
    "geotiff": (".tif", lambda path, seed: write_geotiff(path, np.moveaxis(rgb8(seed), -1, 0), descriptions=None,
                                                         photometric="RGB")),
    # GDAL's RGB with a fourth band it does not flag as alpha: most 8-bit aerial tiles (PIL reads it as RGBA)
    "gdal-rgba-geotiff": (".tif", lambda path, seed: write_geotiff(
        path, np.concatenate([np.moveaxis(rgb8(seed), -1, 0), np.full((1, 40, 28), 255, np.uint8)]),
        descriptions=None, photometric="RGB")),
    # JPEG-in-TIFF stores YCbCr, whose chroma GDAL's and PIL's decoders upsample differently
    "jpeg-geotiff": (".tif", lambda path, seed: write_geotiff(
        path, np.moveaxis(np.repeat(np.repeat(rgb8(seed, 20, 16), 2, axis=0), 2, axis=1), -1, 0), descriptions=None,
        photometric="YCBCR", compress="JPEG", tiled=True, blockxsize=16, blockysize=16)),
}


@pytest.mark.parametrize("kind", RGB_WRITERS)
def test_rgb_folders_give_the_samples_they_gave_before(tmp_path, kind):
    suffix, make = RGB_WRITERS[kind]
    write_folder(tmp_path / "d", make, suffix)
    dataset = folder(tmp_path / "d", image_size=24)
    assert dataset.image_bands == Bands.rgb3()
    for sample_id, sample in samples(dataset).items():
        expected = before_bands(tmp_path / "d" / sample_id, 24)
        assert sample.image.dtype == np.uint8 and sample.image.shape == (24, 24, 3)
        np.testing.assert_array_equal(sample.image, expected)
    assert "bands" not in dataset.params() and "scale" not in dataset.params()


def test_8_bit_bands_stay_uint8_and_resize_like_rgb(tmp_path):
    """Four 8-bit bands (RGB + near-infrared, no alpha) keep uint8; each band resizes as an RGB image's."""
    data = np.random.default_rng(3).integers(0, 256, (4, 40, 40), dtype=np.uint8)
    write_folder(tmp_path / "d", lambda path, seed: write_geotiff(path, data, photometric="MINISBLACK"))
    sample = samples(folder(tmp_path / "d", image_size=24))["train/field/00.tif"]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (24, 24, 4)
    rgb = np.asarray(Image.fromarray(np.moveaxis(data[:3], 0, -1)).resize((24, 24), Image.BILINEAR))
    np.testing.assert_array_equal(sample.image[..., :3], rgb)
    nir = np.asarray(Image.fromarray(data[3]).resize((24, 24), Image.BILINEAR))
    np.testing.assert_array_equal(sample.image[..., 3], nir)

    # with a nodata value (7 here): still uint8, no-data pixels 0 in their band
    write_folder(tmp_path / "nodata", lambda path, seed: write_geotiff(path, data, photometric="MINISBLACK", nodata=7))
    sample = samples(folder(tmp_path / "nodata", image_size=40))["train/field/00.tif"]
    assert sample.image.dtype == np.uint8 and (data == 7).any()
    np.testing.assert_array_equal(sample.image, np.moveaxis(np.where(data == 7, 0, data), 0, -1))


def test_float_bands_resize_band_by_band_with_pil_bilinear(tmp_path):
    seeds = four_band_folder(tmp_path / "d")
    image = samples(folder(tmp_path / "d", image_size=20, scale=[0, 10000]))["train/field/01.tif"].image
    data = reflectance(seeds["train/field/01.tif"])
    for band in range(4):
        scaled = np.clip(data[band] / 10000, 0, 1).astype(np.float32)
        expected = np.asarray(Image.fromarray(scaled, "F").resize((20, 20), Image.BILINEAR))
        np.testing.assert_array_equal(image[..., band], expected)


def test_the_fingerprint_leaves_default_band_parameters_out(tmp_path):
    four_band_folder(tmp_path / "d")
    default = folder(tmp_path / "d")
    assert set(default.params()) == {"root", "image_size", "classes", "on_error", "mask_white_background"}
    assert folder(tmp_path / "d", scale="dtype").fingerprint() == default.fingerprint()
    others = {folder(tmp_path / "d", **p).fingerprint() for p in (
        {"scale": [0, 10000]}, {"bands": [4, 1]}, {"rgb": [4, 1, 2]}, {"band_names": ["a", "b", "c", "d"]})}
    assert len(others) == 4 and default.fingerprint() not in others
    assert folder(tmp_path / "d", scale=[0, 10000]).params()["scale"] == [0.0, 10000.0]


# -- orientation, and reading without rasterio ------------------------------------------------------------


# what each orientation tag asks a viewer to do to the stored pixels, undone: the stored pixels of a view
STORED_FROM_SHOWN = {3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_tiff_orientation_tag_is_applied_to_every_band(tmp_path, orientation):
    shown = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97  # as displayed: 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(STORED_FROM_SHOWN[orientation](shown))).save(tmp_path / "wide.tif",
                                                                                       exif=exif)
    pixels, nodata, info = read_bands(tmp_path / "wide.tif")
    assert info.dtype == "uint16" and nodata is None
    np.testing.assert_array_equal(pixels[..., 0], shown)

    rgb = rgb8(1, 20, 30)
    Image.fromarray(np.ascontiguousarray(STORED_FROM_SHOWN[orientation](rgb))).save(tmp_path / "rgb.tif", exif=exif)
    np.testing.assert_array_equal(read_bands(tmp_path / "rgb.tif")[0], rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.tif"), rgb)  # as PIL shows it


def test_without_rasterio_8_bit_rgb_tiffs_read_as_before_and_others_name_the_extra(tmp_path, monkeypatch):
    write_folder(tmp_path / "rgb", RGB_WRITERS["tiff"][1])
    write_folder(tmp_path / "grey", lambda path, seed: Image.fromarray(
        reflectance(seed, bands=1)[0]).save(path))
    four_band_folder(tmp_path / "multi")
    with_rasterio = samples(folder(tmp_path / "grey", image_size=24))
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now raises ImportError
    for sample_id, sample in samples(folder(tmp_path / "rgb", image_size=24)).items():
        np.testing.assert_array_equal(sample.image, before_bands(tmp_path / "rgb" / sample_id, 24))
    grey = folder(tmp_path / "grey", image_size=24)
    assert grey.image_bands == Bands(("gray",), (0, 0, 0))
    for sample_id, sample in samples(grey).items():  # PIL reads a 16-bit grey TIFF as rasterio does
        np.testing.assert_array_equal(sample.image, with_rasterio[sample_id].image)
    with pytest.raises(UserError, match=r"00\.tif: reading this TIFF needs rasterio.*pip install 'xaibench\[geo\]'"):
        folder(tmp_path / "multi").check()


def test_without_rasterio_a_float_geotiff_keeps_its_nodata_and_description(tmp_path, monkeypatch):
    def make(path, seed):
        data = np.random.default_rng(seed).uniform(0.2, 1, (1, SIZE, SIZE)).astype(np.float32)
        data[0, :3] = 0.1  # a no-data value that float32 holds only approximately
        write_geotiff(path, data, descriptions=["ndvi"], nodata=0.1)

    write_folder(tmp_path / "d", make)
    with_rasterio = folder(tmp_path / "d")
    expected = {k: s.image for k, s in samples(with_rasterio).items()}
    assert with_rasterio.image_bands == Bands(("ndvi",), (0, 0, 0))
    assert all((image[:3] == 0).all() and image[3:].min() >= 0.2 for image in expected.values())
    monkeypatch.setitem(sys.modules, "rasterio", None)
    without = folder(tmp_path / "d")
    assert without.image_bands == with_rasterio.image_bands
    for sample_id, sample in samples(without).items():
        np.testing.assert_array_equal(sample.image, expected[sample_id])
    assert without.describe()["nodata_images"]["train"] == 4


# -- through the command line --------------------------------------------------------------------------------


def test_data_info_on_a_4_band_16_bit_folder(tmp_path, capsys):
    four_band_folder(tmp_path / "d")
    code = main(["data", "info", "folder", "--root", str(tmp_path / "d"), "--param", "image_size=16",
                 "--param", "scale=[0, 10000]", "--param", "band_names=[r, g, b, n]"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = json.loads(captured.out)
    assert info["details"]["bands"] == "4 bands (r, g, b, n; composite r, g, b)"
    assert info["splits"]["train"]["samples"] == 4 and info["image_sizes"] == {"16x16": 6}
    assert main(["data", "info", "folder", "--root", str(tmp_path / "d"), "--param", "bands=[1, 5]"]) == 2
    assert "band 5 asked for" in capsys.readouterr().err


def test_the_default_composite_follows_the_bands_colour_labels(tmp_path):
    """A file whose bands say blue, green, red, near-infrared is shown with band 3 as red, not band 1."""
    data = reflectance(5)
    write_folder(tmp_path / "d", lambda path, seed: write_geotiff(path, data, descriptions=None, photometric="MINISBLACK"))
    for path in (tmp_path / "d").rglob("*.tif"):
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.undefined]
    dataset = folder(tmp_path / "d")
    assert dataset.image_bands.rgb == (2, 1, 0)
    assert folder(tmp_path / "d", rgb=[1, 2, 3]).image_bands.rgb == (0, 1, 2)  # as given


def test_a_folder_without_tiffs_keeps_the_fingerprint_it_had_before_bands(tmp_path):
    import hashlib

    write_folder(tmp_path / "d", RGB_WRITERS["png"][1], ".png")
    dataset = folder(tmp_path / "d", image_size=24)
    content = {"dataset": "folder", "loader_version": 2,
               "params": {"image_size": 24, "classes": list(CLASSES), "on_error": "raise",
                          "mask_white_background": False}, "files": dataset._files()}
    expected = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert dataset.fingerprint() == expected
