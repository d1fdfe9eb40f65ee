"""Images of any number of bands through a run: the data stage keeps every band, backbones, masks and
explainers get all of them, segmenters and figures get the colour composite, and a component written for
RGB fails its cells on other bands rather than being given three of them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import ContractViolation
from xaibench.kit.contracts import Bands, Sample, band_arguments, validate_sample
from xaibench.pipeline import bands as band_statistics
from xaibench.pipeline.artifacts import Artifacts

NAMES = ("red", "green", "blue", "nir")


class NirBlobs:
    """4-band float32 tiles whose class shows only in band 4: a bright NIR square on class 1 (its mask);
    the red, green and blue bands are noise of one distribution in both classes."""

    classes = ["absent", "present"]
    image_bands = Bands(NAMES, (2, 1, 0))  # the composite shows blue as red: a composite that is not the identity

    def __init__(self, *, size: int = 32, n: int = 16):
        self.size, self.n = size, n

    def split(self, name):
        rng = np.random.default_rng(("train", "val", "test").index(name))
        samples = []
        for i in range(self.n if name != "val" else 0):
            image = rng.uniform(0.1, 0.6, (self.size, self.size, 4)).astype(np.float32)
            label = i % 2
            mask = None
            if label:
                r, c = rng.integers(0, self.size // 2, 2)
                mask = np.zeros((self.size, self.size), bool)
                mask[r: r + self.size // 3, c: c + self.size // 3] = True
                image[mask, 3] = 0.95
            samples.append(Sample(f"{name}-{i}", image, label, mask))
        return samples

    def fingerprint(self):
        return f"nir-blobs-{self.size}-{self.n}"


class RgbOnlyMask:
    """A third-party mask written for RGB images: no ``bands`` keyword."""

    def __call__(self, images, foreground):
        import torch

        return torch.where(foreground, images, torch.zeros_like(images))


class Composites:
    """A segmenter that records the images it is given."""

    seen: list = []

    def segment(self, image, prompts):
        Composites.seen.append(image.copy())
        return [np.zeros(image.shape[:2], bool) for _ in prompts]


class Plugin:
    @hookimpl
    def register_datasets(self, register):
        register("nir-blobs", NirBlobs)

    @hookimpl
    def register_masks(self, register):
        register("rgb-only", RgbOnlyMask)

    @hookimpl
    def register_segmenters(self, register):
        register("composites", Composites)


GRID = """\
name: bands
seeds: [0]
datasets: [nir-blobs]
backbones: [{name: resnet18, target_layer: layer3}]
masks: [median, rgb-only]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [gradcam]
seeders: [{name: top-k, k: 2, min_distance: 4}]
segmenters: [composites]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 2, faithfulness_images: 2}
"""


@pytest.fixture
def plugin(add_plugin):
    Composites.seen = []
    return add_plugin(Plugin(), name="bands-plugin")


def test_a_four_band_run_keeps_every_band_and_refuses_rgb_only_components(plugin, write_grid, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--quiet"])
    assert code == 1  # the rgb-only mask's cells fail; the others are done
    table = pd.read_csv(out / "leaderboard.csv")
    done = table[table["status"] == "done"]
    assert set(done["mask"]) == {"none", "median"}
    failed = table[table["status"] != "done"]
    assert len(failed) and set(failed["mask"]) == {"rgb-only"}
    error = " ".join(failed["error"].astype(str))
    assert "takes RGB images only" in error and "4 bands (red, green, blue, nir; composite blue, green, red)" in error

    # the data stage kept all four float bands and recorded them
    artifacts = Artifacts(out / "cache")
    (data_key,) = {p.name.split(".")[0] for p in (out / "cache" / "data").iterdir()}
    train = artifacts.data(data_key, "train")
    assert train["images"].shape[1:] == (32, 32, 4) and train["images"].dtype == np.float32
    bands = artifacts.bands(data_key)
    assert bands.names == NAMES and bands.rgb == (2, 1, 0)
    images = np.asarray(train["images"]).reshape(-1, 4).astype(np.float64)
    assert np.allclose(bands.median, np.median(images, axis=0)) and np.allclose(bands.mean, images.mean(axis=0))

    # the segmenter was given the colour composite of each explained test image, as uint8
    test = NirBlobs().split("test")
    explained = [s for s in test if s.mask is not None]
    composites = [np.rint(sample.image[..., [2, 1, 0]] * 255).astype(np.uint8) for sample in explained]
    # the first segment stage is called for every explained image; the second (baseline and median cells)
    # only where its prompts differ from the first's (a repeated call is answered from memory)
    assert len(explained) <= len(Composites.seen) <= 2 * len(explained)
    for image, composite in zip(Composites.seen, composites):
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert np.array_equal(image, composite)
    assert all(any(np.array_equal(image, c) for c in composites) for image in Composites.seen[len(explained):])

    run = json.loads((out / "run.json").read_text())
    from PIL import Image

    fig1 = next(f for f in run["figures"] if "fig1" in f)
    with Image.open(out / fig1) as figure:  # raw composite, the nir band in grey and the median mask: 3 columns
        assert figure.size[0] == round(2.2 * 3 * 100)


def test_the_median_mask_fills_composite_bands_with_imagenet_and_others_with_the_dataset_median():
    import torch

    from xaibench.kit.registry import get_registry

    bands = Bands(NAMES, (2, 1, 0), mean=(0.1,) * 4, std=(0.1,) * 4, median=(0.1, 0.2, 0.3, 0.42))
    mask = get_registry().create("masks", "median")
    images = torch.rand(2, 4, 8, 8)
    foreground = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    out = mask(images, foreground, bands=bands)
    # composite position 0 (red) is band 2, so band 2 gets ImageNet's red; band 3 (nir) the dataset's median
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.406, 0.456, 0.485, 0.42]))
    for name in ("white", "black", "blur"):
        masked = get_registry().create("masks", name)(images, foreground, bands=bands)
        assert masked.shape == images.shape
    with pytest.raises(ValueError, match="channels"):
        mask(images[:, :3], foreground, bands=bands)
    grey = Bands(("pan",), (0, 0, 0), mean=(0.5,), std=(0.2,), median=(0.3,))
    assert mask.fill(grey) == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]


def test_band_arguments_give_bands_to_those_that_take_them_and_refuse_rgb_only_ones_on_other_bands():
    rgb, rgbn = Bands.rgb3(), Bands(NAMES)
    assert band_arguments(RgbOnlyMask(), "masks", rgb) == {}
    with pytest.raises(ContractViolation, match="takes RGB images only .* 4 bands"):
        band_arguments(RgbOnlyMask(), "masks", rgbn)
    # three bands shown in another order are not RGB images either
    with pytest.raises(ContractViolation):
        band_arguments(RgbOnlyMask(), "masks", Bands(("b", "g", "r"), (2, 1, 0)))

    class Takes:
        def __call__(self, images, foreground, *, bands=None):
            return images

    assert band_arguments(Takes(), "masks", rgbn) == {"bands": rgbn}


def test_samples_are_held_to_the_dataset_bands():
    bands = Bands(NAMES)
    image = np.zeros((4, 4, 4), np.float32)
    validate_sample(Sample("a", image, 0, None), 2, bands)
    validate_sample(Sample("a", np.zeros((4, 4, 4), np.uint8), 0, None), 2, bands)
    with pytest.raises(ContractViolation, match=r"\(H, W, 4\)"):
        validate_sample(Sample("a", np.zeros((4, 4, 3), np.float32), 0, None), 2, bands)
    with pytest.raises(ContractViolation, match=r"\(H, W, 3\)"):  # RGB where the dataset declares nothing
        validate_sample(Sample("a", image, 0, None), 2)
    for bad in (np.full((4, 4, 4), 1.5, np.float32), np.full((4, 4, 4), np.nan, np.float32)):
        with pytest.raises(ContractViolation, match=r"float images are in \[0, 1\]"):
            validate_sample(Sample("a", bad, 0, None), 2, bands)
    with pytest.raises(ContractViolation, match="uint8 or float32"):
        validate_sample(Sample("a", np.zeros((4, 4, 4), np.uint16), 0, None), 2, bands)


def test_bands_are_validated():
    with pytest.raises(ValueError, match="distinct"):
        Bands(("a", "a"))
    with pytest.raises(ValueError, match="three 0-based"):
        Bands(("a", "b"), (0, 1, 2))
    with pytest.raises(ValueError, match="one value per band"):
        Bands(("a", "b", "c"), median=(0.5, 0.5))
    grey = Bands(("pan",), (0, 0, 0))
    assert not grey.is_rgb and grey.composite(np.full((2, 2, 1), 0.5, np.float32)).tolist() == [[[128] * 3] * 2] * 2


def test_band_statistics_use_at_most_256_images_evenly_spaced():
    images = np.arange(1000, dtype=np.float32).reshape(1000, 1, 1, 1) / 1000
    found = band_statistics.statistics(images)
    chosen = band_statistics.chosen(1000)
    assert len(chosen) == 256 and chosen[0] == 0 and chosen[-1] == 999
    assert np.isclose(found["mean"][0], images[chosen].mean()) and np.isclose(found["max"][0], 0.999)
    assert np.isnan(band_statistics.statistics(np.zeros((0, 4, 4, 2), np.uint8))["mean"]).all()


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_band_statistics_read_in_chunks_equal_numpy_on_all_the_pixels(dtype):
    rng = np.random.default_rng(4)
    images = (rng.integers(0, 256, (300, 9, 7, 3), dtype=np.uint8) if dtype == "uint8"
              else np.round(rng.random((300, 9, 7, 3)), 3).astype(np.float32))  # ties in the median's bin
    found = band_statistics.statistics(images, chunk=7)
    pixels = images[band_statistics.chosen(300)].reshape(-1, 3)
    values = pixels / 255.0 if dtype == "uint8" else pixels.astype(np.float64)
    assert np.array_equal(found["median"], np.median(values, axis=0))
    assert np.array_equal(found["min"], values.min(axis=0)) and np.array_equal(found["max"], values.max(axis=0))
    assert np.allclose(found["mean"], values.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(found["std"], values.std(axis=0), rtol=0, atol=1e-9)
    odd = band_statistics.statistics(images[:5, :3, :3], chunk=2)  # 45 values per band: the middle one
    assert np.array_equal(odd["median"], np.median((images[:5, :3, :3] / (255.0 if dtype == "uint8" else 1.0))
                                                   .reshape(-1, 3).astype(np.float64), axis=0))


def test_a_dataset_with_images_of_two_dtypes_fails_its_data_stage(add_plugin, write_grid, tmp_path):
    class Mixed(NirBlobs):
        def split(self, name):
            samples = super().split(name)
            return [Sample(s.id, (s.image * 255).astype(np.uint8), s.label, s.mask) if i == 3 else s
                    for i, s in enumerate(samples)]

    class MixedPlugin:
        @hookimpl
        def register_datasets(self, register):
            register("mixed", Mixed)

    add_plugin(MixedPlugin(), name="mixed-plugin")
    grid = GRID.replace("[nir-blobs]", "[mixed]").replace("[median, rgb-only]", "[median]") \
        .replace("segmenters: [composites]", "segmenters: [random-walker]")
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(grid)), "--out", str(out), "--quiet"]) == 1
    table = pd.read_csv(out / "leaderboard.csv")
    assert "images differ in dtype (float32 and uint8 for sample 'train-3')" in " ".join(table["error"].astype(str))


KNOWN_ANSWER = """\
name: known-answer
seeds: [0]
datasets:
  - {name: synthetic, bands: rgbn, hide_in_rgb: true, spurious: 0.0, n_train: 96, n_val: 0, n_test: 128, image_size: 40}
  - {name: synthetic, bands: rgb, hide_in_rgb: true, spurious: 0.0, n_train: 96, n_val: 0, n_test: 128, image_size: 40}
backbones: [{name: timm, params: {name: test_resnet}}]
masks: []
explainers: [gradcam]
train: {epochs: 8, batch_size: 16, lr: 0.003}
protocol: {faithfulness_steps: 0}
"""

GEOTIFFS = """\
name: geotiffs
seeds: [0]
datasets:
  - {name: folder, root: geotiffs, image_size: 40, scale: [0, 10000]}
  - {name: folder, root: geotiffs, image_size: 40, scale: [0, 10000], bands: [1, 2, 3]}
backbones: [{name: timm, params: {name: test_resnet}}]
masks: []
explainers: [gradcam]
train: {epochs: 12, batch_size: 16, lr: 0.003}
protocol: {faithfulness_steps: 0}
"""


def write_nir_geotiffs(root, n_train=32, n_test=24, size=40):
    """``root/{train,test}/{empty,crowns}/*.tif``: 4-band uint16 GeoTIFFs (red, green, blue, nir; reflectance
    times 10000, as aerial surveys deliver it) of one distribution in red, green and blue for both classes;
    ``crowns`` tiles hold a square bright in nir alone, which is their mask (``masks/crowns/*.png``)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(("empty", "crowns")):
            (root / split / name).mkdir(parents=True)
            (root / split / "masks" / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                data = rng.integers(500, 4500, (4, size, size)).astype(np.uint16)
                if label:
                    row, col = rng.integers(0, size - 14, 2)
                    mask = np.zeros((size, size), bool)
                    mask[row:row + 14, col:col + 14] = True
                    data[3][mask] = rng.integers(7000, 9000, int(mask.sum()))
                    Image.fromarray(mask.astype(np.uint8) * 255).save(root / split / "masks" / name / f"{i:03d}.png")
                with rasterio.open(root / split / name / f"{i:03d}.tif", "w", driver="GTiff", width=size, height=size,
                                   count=4, dtype="uint16", crs="EPSG:2193",
                                   transform=from_origin(1_800_000 + 20 * i, 5_800_000, 0.5, 0.5)) as dst:
                    dst.write(data)
                    dst.descriptions = NAMES


def assert_learnt_from_four_bands_only(grid: Path, out: Path, three: str) -> None:
    """Run ``grid``, two datasets of the same images, and hold its four-band model to learning the task (with
    Grad-CAM on the crowns) and its three-band one (the dataset whose label holds ``three``) to chance."""
    assert main(["run", "--grid", str(grid), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    rows = {three in dataset: row for dataset, row in ((r["dataset"], r) for _, r in table.iterrows())}
    assert len(table) == 2 and set(table["status"]) == {"done"} and set(rows) == {True, False}
    four, three_bands = rows[False], rows[True]
    assert four["accuracy"] >= 0.85, four.to_dict()
    assert abs(three_bands["accuracy"] - 0.5) <= 0.15, three_bands.to_dict()
    # Grad-CAM of the four-band model finds crowns that are visible in near-infrared only
    assert four["jaccard"] > 1.5 * four["random_jaccard"], four.to_dict()


def test_crowns_only_in_near_infrared_are_learnt_from_four_bands_and_not_from_three(registry, write_grid, tmp_path):
    assert_learnt_from_four_bands_only(write_grid(KNOWN_ANSWER), tmp_path / "run", "bands=rgb,")


def test_a_16_bit_geotiff_folder_whose_class_shows_in_band_4_alone_is_learnt_from_its_four_bands(registry, write_grid,
                                                                                                 tmp_path):
    pytest.importorskip("rasterio")
    write_nir_geotiffs(tmp_path / "geotiffs")
    assert_learnt_from_four_bands_only(write_grid(GEOTIFFS), tmp_path / "run", "bands=[1, 2, 3]")


def test_data_info_and_audit_report_per_band_statistics(registry, capsys, tmp_path):
    params = ["--param", "bands=rgbn", "--param", "hide_in_rgb=true", "--param", "spurious=0", "--param", "n_train=40",
              "--param", "n_val=0", "--param", "n_test=8", "--param", "image_size=32"]
    assert main(["data", "info", "synthetic", *params]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bands"]["names"] == list(NAMES) and info["bands"]["composite"] == ["red", "green", "blue"]
    from xaibench_plugins.synthetic import SyntheticDataset

    train = SyntheticDataset(bands="rgbn", hide_in_rgb=True, spurious=0, n_train=40, n_val=0, n_test=8,
                             image_size=32).split("train")
    nir = np.stack([s.image[..., 3] for s in train]).astype(np.float64) / 255
    assert info["bands"]["per_split"]["train"]["nir"]["median"] == pytest.approx(np.median(nir), abs=1e-6)
    assert info["bands"]["per_split"]["train"]["nir"]["max"] == pytest.approx(nir.max(), abs=1e-6)

    out = tmp_path / "audit.json"
    assert main(["data", "audit", "synthetic", *params, "--output", str(out)]) == 0
    audit = json.loads(out.read_text())
    per_class = audit["bands"]["per_class"]
    samples = [s for split in ("train", "test") for s in SyntheticDataset(
        bands="rgbn", hide_in_rgb=True, spurious=0, n_train=40, n_val=0, n_test=8, image_size=32).split(split)]
    means = np.array([s.image.reshape(-1, 4).mean(axis=0) / 255 for s in samples])
    labels = np.array([s.label for s in samples])
    for label, name in enumerate(["absent", "present"]):
        for band, band_name in enumerate(NAMES):
            assert per_class[name][band_name]["mean"] == pytest.approx(means[labels == label, band].mean(), abs=1e-6)
    # crowns hidden in the colour bands raise the near-infrared band most
    shift = {band: per_class["present"][band]["mean"] - per_class["absent"][band]["mean"] for band in NAMES}
    assert max(shift, key=shift.get) == "nir" and shift["nir"] > 0.03
