"""The ``synthetic`` dataset's bands: RGB by default, exactly as before; ``rgbn`` adds a near-infrared band in
which vegetation is bright; ``hide_in_rgb`` leaves the class signal in that band alone."""

import hashlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xaibench.errors import ComponentParamsError
from xaibench.kit import contracts
from xaibench.kit.contracts import Bands
from xaibench.kit.registry import get_registry
from xaibench_plugins.synthetic import SyntheticDataset
from xaibench_plugins.synthetic_tiles import LAND_COVER_CLASSES, binary_tile

SMALL = dict(n_train=6, n_val=2, n_test=4, image_size=40)
# sha256 of the samples (see ``digest``) and the fingerprints of SyntheticDataset(task=..., **SMALL), computed
# before the dataset had bands: the default must keep giving exactly these, so cached results stay valid.
BEFORE_BANDS = {
    "binary": ("dfa94752e7c4957475efd14846149f1384bffc20c01e7444c34547566cc315eb",
               "67526f27493d85d63d264224d3ccae530c0fca139af8348ff8352505c9c6c5e4"),
    "multiclass": ("ae94e8ec5789d76ad3977c4bdf1c4d5f069dbd489343b158aea03c6f6d77ee01",
                   "590d89a0102db06fe1d1f3f390b29ca03c35819593c021facbc76360d60d7bc8"),
}


def digest(dataset) -> str:
    """sha256 over every split's ids, images (bytes and shape), masks and labels."""
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        for sample in dataset.split(split):
            h.update(sample.id.encode())
            h.update(sample.image.tobytes())
            h.update(str(sample.image.shape).encode())
            h.update(b"-" if sample.mask is None else sample.mask.tobytes())
            h.update(str(sample.label).encode())
    return h.hexdigest()


def road_pixels(image: np.ndarray) -> np.ndarray:
    """Pale, grey pixels of the colour bands: the gravel road (as in test_synthetic)."""
    rgb = image[..., :3].astype(np.int16)
    darkest, brightest = rgb.min(axis=-1), rgb.max(axis=-1)
    return (darkest > 160) & (brightest - darkest < 30)


def tile_features(pixels: np.ndarray) -> np.ndarray:
    """Per-band mean, standard deviation and 5th, 50th, 95th and 99th percentiles of (H, W, C) pixels."""
    values = pixels.reshape(-1, pixels.shape[-1]).astype(float)
    return np.concatenate([values.mean(0), values.std(0), *np.percentile(values, [5, 50, 95, 99], axis=0)])


def accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a logistic regression on standardised features."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(cross_val_score(model, features, labels, cv=5).mean())


# -- the default: RGB, as before ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_default_samples_and_fingerprint_are_unchanged(task):
    dataset = SyntheticDataset(task=task, **SMALL)
    assert dataset.image_bands == Bands.rgb3()
    assert "bands" not in dataset.params() and "hide_in_rgb" not in dataset.params()
    explicit = SyntheticDataset(task=task, bands="rgb", hide_in_rgb=False, **SMALL)
    for one in (dataset, explicit):
        assert (digest(one), one.fingerprint()) == BEFORE_BANDS[task]


# -- rgbn: a near-infrared fourth band ---------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_rgbn_adds_a_band_and_keeps_the_colour_bands_labels_masks_and_cues(task):
    rgb, rgbn = SyntheticDataset(task=task, **SMALL), SyntheticDataset(task=task, bands="rgbn", **SMALL)
    assert rgbn.image_bands == Bands(("red", "green", "blue", "nir"), (0, 1, 2))
    assert rgbn.params()["bands"] == "rgbn" and "hide_in_rgb" not in rgbn.params()
    assert rgbn.fingerprint() != rgb.fingerprint()
    assert rgbn.fingerprint() != SyntheticDataset(task=task, bands="rgbn", **{**SMALL, "seed": 1}).fingerprint()
    for split in ("train", "val", "test"):
        for a, b in zip(rgb.split(split), rgbn.split(split), strict=True):
            contracts.validate_sample(b, len(rgbn.classes), rgbn.image_bands)
            assert b.image.dtype == np.uint8 and b.image.shape == (40, 40, 4)
            assert np.array_equal(b.image[..., :3], a.image)
            assert (a.id, a.label, a.group) == (b.id, b.label, b.group)
            assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
            assert not np.array_equal(b.image[..., 3], b.image[..., 1])  # a band of its own, not a copy
        assert np.array_equal(rgb.cues(split), rgbn.cues(split))


@pytest.mark.parametrize("hide_in_rgb", [False, True])
def test_near_infrared_is_bright_on_the_crowns_and_dark_on_the_road(hide_in_rgb):
    dataset = SyntheticDataset(bands="rgbn", hide_in_rgb=hide_in_rgb, n_train=24, n_val=0, n_test=1,
                               image_size=48, spurious=1.0)  # spurious 1: every present tile has a road
    # With hide_in_rgb the road is still drawn in colour, and present tiles hold it as often as absent ones.
    measured = 0
    for sample in dataset.split("train"):
        if sample.mask is None or not sample.mask.any():
            continue
        nir = sample.image[..., 3].astype(float)
        road = road_pixels(sample.image)
        crowns = nir[sample.mask].mean()
        assert crowns > 170
        assert crowns > nir[~sample.mask & ~road].mean() + 40
        if road.sum() > 20:
            assert crowns > nir[road].mean() + 100
            measured += 1
    assert measured >= 5


def test_near_infrared_levels_of_the_land_cover_classes():
    dataset = SyntheticDataset(task="multiclass", bands="rgbn", n_train=28, n_val=0, n_test=1, image_size=40)
    levels: dict[str, list[float]] = {}
    for sample in dataset.split("train"):
        levels.setdefault(dataset.classes[sample.label], []).append(sample.image[..., 3][sample.mask].mean())
    level = {name: float(np.mean(values)) for name, values in levels.items()}
    assert set(level) == set(LAND_COVER_CLASSES)
    vegetation, other = ("cropland", "grassland", "scrub", "forest"), ("artificial", "bare", "water")
    assert min(level[name] for name in vegetation) > max(level[name] for name in other) + 25
    assert level["forest"] == max(level.values()) and level["water"] == min(level.values()) and level["water"] < 30


# -- hide_in_rgb: the class signal in band 4 alone ---------------------------------------------------------


@pytest.mark.parametrize("cue", [0, 1])
def test_hidden_crowns_leave_the_colour_bands_of_the_absent_tile(cue):
    for seed in range(4):
        image, mask = binary_tile(np.random.default_rng(seed), 40, 1, cue, 2, np.random.default_rng(99 + seed),
                                  hide_in_rgb=True)
        absent, none = binary_tile(np.random.default_rng(seed), 40, 0, cue, 2)
        assert none is None and mask.any()
        assert np.array_equal(image[..., :3], absent)
        nir = image[..., 3].astype(float)
        assert nir[mask].mean() > nir[~mask].mean() + 40


def test_hidden_crowns_carry_no_class_signal_in_rgb_and_all_of_it_in_near_infrared():
    # spurious 0: the road cue, drawn in colour as always, does not follow the label either.
    params = dict(n_train=80, n_val=0, n_test=1, image_size=32, spurious=0.0, bands="rgbn")
    hidden = SyntheticDataset(hide_in_rgb=True, **params).split("train")
    labels = np.array([sample.label for sample in hidden])
    rgb_accuracy = accuracy(np.array([tile_features(sample.image[..., :3]) for sample in hidden]), labels)
    nir_accuracy = accuracy(np.array([tile_features(sample.image[..., 3:]) for sample in hidden]), labels)
    assert rgb_accuracy < 0.65 and nir_accuracy > 0.95
    # The same features see the crowns in colour when they are not hidden: the classifier is not blind.
    shown = SyntheticDataset(**params).split("train")
    assert accuracy(np.array([tile_features(sample.image[..., :3]) for sample in shown]), labels) > 0.8


def test_hidden_crowns_have_the_colours_of_the_ground_around_them():
    dataset = SyntheticDataset(bands="rgbn", hide_in_rgb=True, n_train=30, n_val=0, n_test=1, image_size=40)
    present = [sample for sample in dataset.split("train") if sample.mask is not None and sample.mask.any()]
    assert len(present) >= 12
    within = []  # per tile: whether each crown pixel's colour lies in the range of the tile's ground colours
    for sample in present:
        rgb = sample.image[..., :3].astype(float)
        ground = rgb[~sample.mask & ~road_pixels(sample.image)]
        low, high = np.percentile(ground, 0.5, axis=0), np.percentile(ground, 99.5, axis=0)
        crowns = rgb[sample.mask]
        within.append(((crowns >= low) & (crowns <= high)).all(axis=1))
        assert np.all(np.abs(crowns.mean(axis=0) - ground.mean(axis=0)) < 2.5 * ground.std(axis=0))
    # A small crown may sit on the edge of the ground's colour gradient, so a few tiles fall a little short.
    assert np.mean(np.concatenate(within)) > 0.97 and min(np.mean(inside) for inside in within) > 0.75


def test_hide_in_rgb_changes_the_fingerprint_and_the_present_tiles_only():
    params = dict(bands="rgbn", **SMALL)
    shown, hidden = SyntheticDataset(**params), SyntheticDataset(hide_in_rgb=True, **params)
    assert hidden.params()["hide_in_rgb"] is True and hidden.fingerprint() != shown.fingerprint()
    for a, b in zip(shown.split("train"), hidden.split("train"), strict=True):
        assert a.label == b.label and (a.mask is None) == (b.mask is None)
        if a.mask is None:
            assert np.array_equal(a.image, b.image)  # absent tiles have no crowns to hide


@pytest.mark.parametrize("bands", ["rgb", "rgbn"])
def test_hide_in_rgb_needs_the_binary_task(bands):
    with pytest.raises(ComponentParamsError) as error:
        get_registry().create("datasets", "synthetic", hide_in_rgb=True, bands=bands, task="multiclass")
    assert [where for where, _ in error.value.problems] == ["hide_in_rgb"]
    assert "needs task: binary" in str(error.value)


def test_hidden_crowns_without_their_band_are_the_colour_bands_of_the_rgbn_tiles():
    rgbn = SyntheticDataset(bands="rgbn", hide_in_rgb=True, **SMALL)
    rgb = SyntheticDataset(bands="rgb", hide_in_rgb=True, **SMALL)
    assert rgb.image_bands.is_rgb and rgb.fingerprint() != rgbn.fingerprint()
    assert rgb.fingerprint() != SyntheticDataset(**SMALL).fingerprint()
    for a, b in zip(rgbn.split("train"), rgb.split("train"), strict=True):
        assert b.image.shape[-1] == 3 and np.array_equal(a.image[..., :3], b.image)
        assert a.label == b.label and _same(a.mask, b.mask)


def _same(a, b):
    return (a is None and b is None) or np.array_equal(a, b)


def test_the_registry_validates_the_band_parameters():
    dataset = get_registry().create("datasets", "synthetic", bands="rgbn", hide_in_rgb=True, n_train=4)
    assert dataset.image_bands.names == ("red", "green", "blue", "nir") and dataset.hide_in_rgb is True
    for bad in ({"bands": "nir"}, {"bands": "RGB"}, {"hide_in_rgb": "perhaps"}):
        with pytest.raises(ComponentParamsError):
            get_registry().validate("datasets", "synthetic", bad)
