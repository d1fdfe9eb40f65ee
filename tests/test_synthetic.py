"""The built-in ``synthetic`` dataset: contract, determinism, masks, the spurious road cue and annotation noise."""

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from xaibench.errors import ComponentParamsError
from xaibench.kit import testing
from xaibench.kit.contracts import Sample
from xaibench.kit.registry import Registry, get_registry
from xaibench_plugins import synthetic
from xaibench_plugins.annotation_noise import AnnotationNoise
from xaibench_plugins.synthetic import SyntheticDataset

SIZE = 64


def road_pixels(image: np.ndarray) -> np.ndarray:
    """Pale, grey pixels: the gravel road. Nothing else in a tile is this bright and unsaturated."""
    image = image.astype(np.int16)
    darkest, brightest = image.min(axis=-1), image.max(axis=-1)
    return (darkest > 160) & (brightest - darkest < 30)


def road_direction_class(image: np.ndarray, num_classes: int) -> int:
    """The direction band (multiples of 180 / num_classes degrees from the x axis) of the road's main axis."""
    rows, cols = np.nonzero(road_pixels(image))
    covariance = np.cov(np.stack([cols, rows]).astype(float))
    x, y = np.linalg.eigh(covariance)[1][:, -1]
    angle = np.arctan2(y, x) % np.pi
    return int(np.round(angle / (np.pi / num_classes))) % num_classes


def agreement(labels, cues) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(cues)))


def rounding(dataset, samples) -> float:
    """How far a split's cue agreement may sit from the stated rate: one sample per class."""
    return len(dataset.classes) / len(samples)


@pytest.fixture(scope="module")
def binary():
    return SyntheticDataset(task="binary", n_train=80, n_val=20, n_test=60, image_size=SIZE, spurious=0.9)


@pytest.fixture(scope="module")
def multiclass():
    return SyntheticDataset(
        task="multiclass", num_classes=5, n_train=100, n_val=20, n_test=50, image_size=SIZE, spurious=0.9
    )


# -- registration and parameters ---------------------------------------------------------------------------


def test_plugin_registers_the_dataset_and_its_parameters_are_validated():
    registry = Registry(load_entry_points=False)
    registry.add_plugin(synthetic, name="synthetic")
    dataset = registry.create("datasets", "synthetic", task="multiclass", num_classes=3, n_train=6)
    assert isinstance(dataset, SyntheticDataset)
    assert dataset.classes == ["artificial", "bare", "water"]
    for bad in ({"spurious": 1.5}, {"spurious": -0.1}, {"num_classes": 8}, {"num_classes": 1},
                {"n_train": 0}, {"n_val": -1}, {"image_size": 8}, {"task": "ternary"}, {"colour": "red"}):
        with pytest.raises(ComponentParamsError):
            registry.validate("datasets", "synthetic", bad)


def test_construction_does_no_work_and_splits_are_generated_once(monkeypatch):
    calls = []
    draw = synthetic.binary_tile
    monkeypatch.setattr(synthetic, "binary_tile", lambda *args: calls.append(args) or draw(*args))
    dataset = SyntheticDataset(n_train=6, n_val=2, n_test=4, image_size=32)
    assert calls == []
    first = dataset.split("train")
    assert len(calls) == 6
    second = dataset.split("train")
    assert len(calls) == 6
    assert [s.image is t.image for s, t in zip(first, second)] == [True] * 6


def test_classes():
    assert SyntheticDataset().classes == ["absent", "present"]
    assert SyntheticDataset(task="multiclass").classes == [
        "artificial", "bare", "water", "cropland", "grassland", "scrub", "forest"
    ]
    assert SyntheticDataset(task="multiclass", num_classes=2).classes == ["artificial", "bare"]


def test_unknown_split_lists_the_valid_ones(binary):
    with pytest.raises(ValueError, match="'training'.*train, val, test"):
        binary.split("training")


# -- samples -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_samples_follow_the_contract(task, binary, multiclass):
    dataset = {"binary": binary, "multiclass": multiclass}[task]
    for name in ("train", "val", "test"):
        samples = dataset.split(name)
        size = {"train": dataset.n_train, "val": dataset.n_val, "test": dataset.n_test}[name]
        assert len(samples) == size
        assert [s.id for s in samples] == [f"{name}-{i:05d}" for i in range(size)]
        for sample in samples:
            assert isinstance(sample, Sample)
            assert sample.image.dtype == np.uint8 and sample.image.shape == (SIZE, SIZE, 3)
            assert isinstance(sample.label, int) and 0 <= sample.label < len(dataset.classes)
            if sample.mask is not None:
                assert sample.mask.dtype == bool and sample.mask.shape == (SIZE, SIZE)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_classes_are_balanced_and_shuffled(task):
    dataset = SyntheticDataset(task=task, num_classes=3, n_train=31, n_val=7, n_test=2, image_size=32)
    for name, size in (("train", 31), ("val", 7), ("test", 2)):
        labels = [s.label for s in dataset.split(name)]
        counts = np.bincount(labels, minlength=len(dataset.classes))
        assert counts.sum() == size and counts.max() - counts.min() <= 1
    train = [s.label for s in dataset.split("train")]
    assert train != sorted(train)


def test_empty_validation_split():
    assert SyntheticDataset(n_train=2, n_val=0, n_test=2, image_size=32).split("val") == []


def test_binary_masks_are_the_crowns(binary):
    for name in ("train", "test"):
        for sample in binary.split(name):
            if sample.label == 0:
                assert sample.mask is None
                continue
            assert sample.mask.any()
            crowns = sample.image[sample.mask].astype(float)
            rest = sample.image[~sample.mask].astype(float)
            # Crowns are dark green: darker than the field and greener (G - R) than it.
            assert crowns.mean() < rest.mean()
            assert (crowns[:, 1] - crowns[:, 0]).mean() > (rest[:, 1] - rest[:, 0]).mean() + 10


def test_multiclass_masks_cover_the_labelled_land_cover(multiclass):
    train, test = multiclass.split("train"), multiclass.split("test")
    for sample in train + test:
        assert sample.mask is not None
        assert 0.35 - 1e-3 <= sample.mask.mean() <= 0.8 + 1e-3

    # Colour statistics inside the mask identify the label; outside it they do not.
    def features(samples, inside):
        rows = []
        for s in samples:
            pixels = s.image[s.mask if inside else ~s.mask].astype(float)
            rows.append(np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)]))
        return np.array(rows), np.array([s.label for s in samples])

    accuracy = {}
    for inside in (True, False):
        x, y = features(train, inside)
        x_test, y_test = features(test, inside)
        centroids = np.stack([x[y == c].mean(axis=0) for c in range(len(multiclass.classes))])
        distance = (((x_test[:, None] - centroids[None]) / x.std(axis=0)) ** 2).sum(axis=-1)
        accuracy[inside] = np.mean(distance.argmin(axis=1) == y_test)
    assert accuracy[True] >= 0.85
    assert accuracy[False] <= 0.5


# -- determinism and fingerprint ---------------------------------------------------------------------------


def assert_same(left, right):
    assert [s.id for s in left] == [s.id for s in right]
    assert [s.label for s in left] == [s.label for s in right]
    for a, b in zip(left, right):
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None:
            assert a.mask.tobytes() == b.mask.tobytes()


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_same_parameters_give_identical_samples(task):
    params = dict(task=task, n_train=12, n_val=4, n_test=6, image_size=32, seed=3)
    one, two = SyntheticDataset(**params), SyntheticDataset(**params)
    for name in ("test", "train", "val"):  # generation order must not matter
        assert_same(one.split(name), two.split(name))
    for name in ("train", "val", "test"):
        assert np.array_equal(one.cues(name), two.cues(name))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_seed_changes_the_samples(task):
    params = dict(task=task, n_train=12, n_val=4, n_test=6, image_size=32)
    one, two = SyntheticDataset(seed=0, **params), SyntheticDataset(seed=1, **params)
    different = [not np.array_equal(a.image, b.image) for a, b in zip(one.split("train"), two.split("train"))]
    assert all(different)


def test_splits_have_independent_streams():
    small, large = (SyntheticDataset(n_train=10, n_val=4, n_test=n, image_size=32) for n in (6, 30))
    assert_same(small.split("train"), large.split("train"))
    assert_same(small.split("val"), large.split("val"))
    train, test = small.split("train"), small.split("test")
    assert not any(np.array_equal(a.image, b.image) for a in train for b in test)


def test_fingerprint():
    base = dict(task="binary", n_train=240, n_val=40, n_test=120, image_size=96, seed=0, spurious=0.9,
                num_classes=7)
    fingerprint = SyntheticDataset(**base).fingerprint()
    assert fingerprint == SyntheticDataset(**base).fingerprint() == SyntheticDataset().fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    changed = dict(task="multiclass", n_train=241, n_val=41, n_test=121, image_size=97, seed=1, spurious=0.5,
                   num_classes=6)
    others = {SyntheticDataset(**{**base, key: value}).fingerprint() for key, value in changed.items()}
    assert len(others) == len(changed) and fingerprint not in others
    assert SyntheticDataset(spurious=1).fingerprint() == SyntheticDataset(spurious=1.0).fingerprint()


def test_fingerprint_follows_the_generator_version(monkeypatch):
    before = SyntheticDataset().fingerprint()
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert SyntheticDataset().fingerprint() != before


# -- the spurious cue --------------------------------------------------------------------------------------


def test_binary_cue_is_the_road_and_follows_the_label_only_in_train_and_val(binary):
    expected = {"train": 0.95, "val": 0.95, "test": 0.5}
    for name, rate in expected.items():
        samples, cues = binary.split(name), binary.cues(name)
        seen = [int(road_pixels(s.image).sum() > SIZE) for s in samples]
        assert seen == cues.tolist()
        labels = [s.label for s in samples]
        assert agreement(labels, seen) == pytest.approx(rate, abs=rounding(binary, samples))
    # In test the road is independent of the label: present in half of each class.
    samples, cues = binary.split("test"), binary.cues("test")
    labels = np.array([s.label for s in samples])
    for label in (0, 1):
        assert cues[labels == label].mean() == pytest.approx(0.5, abs=rounding(binary, samples))


def test_multiclass_cue_is_the_road_direction(multiclass):
    classes = len(multiclass.classes)
    expected = {"train": 0.9 + 0.1 / classes, "val": 0.9 + 0.1 / classes, "test": 1 / classes}
    for name, rate in expected.items():
        samples, cues = multiclass.split(name), multiclass.cues(name)
        seen = [road_direction_class(s.image, classes) for s in samples]
        assert seen == cues.tolist()
        labels = [s.label for s in samples]
        assert agreement(labels, seen) == pytest.approx(rate, abs=rounding(multiclass, samples))
    samples, cues = multiclass.split("test"), multiclass.cues("test")
    table = np.zeros((classes, classes), int)
    np.add.at(table, ([s.label for s in samples], cues), 1)
    assert table.max() - table.min() <= 1  # every (label, cue) pair equally often


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_no_spurious_correlation_at_zero(task):
    dataset = SyntheticDataset(task=task, num_classes=4, spurious=0.0, n_train=80, n_val=4, n_test=4,
                               image_size=32)
    samples = dataset.split("train")
    rate = agreement([s.label for s in samples], dataset.cues("train"))
    assert rate == pytest.approx(1 / len(dataset.classes), abs=rounding(dataset, samples))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_road_never_touches_the_mask(task):
    dataset = SyntheticDataset(task=task, num_classes=7, spurious=1.0, n_train=60, n_val=0, n_test=30,
                               image_size=SIZE, seed=5)
    checked = 0
    for name in ("train", "test"):
        for sample in dataset.split(name):
            road = road_pixels(sample.image)
            if sample.mask is None or not road.any():
                continue
            assert not (road & ndimage.binary_dilation(sample.mask)).any()
            checked += 1
    assert checked >= 30


def test_cues_are_a_copy(binary):
    cues = binary.cues("train")
    cues[:] = -1
    assert (binary.cues("train") >= 0).all()



# -- annotation noise --------------------------------------------------------------------------------------

HUMAN_LIKE = {"dilate": 2, "shift": 2, "coarse": 2, "missing": 0.3}


def noisy_and_exact(task, noise, **params):
    params = dict(task=task, num_classes=4, n_train=40, n_val=12, n_test=16, image_size=SIZE, seed=2, **params)
    return SyntheticDataset(annotation_noise=noise, **params), SyntheticDataset(**params)


def mean_iou(samples) -> float:
    pairs = [(s.mask, s.reference) for s in samples if s.mask is not None]
    return float(np.mean([(m & r).sum() / (m | r).sum() for m, r in pairs]))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_noise_degrades_train_and_val_annotations_and_keeps_the_exact_ones_as_references(task):
    noisy, exact = noisy_and_exact(task, HUMAN_LIKE)
    for name in ("train", "val"):
        samples, truth = noisy.split(name), exact.split(name)
        assert [(s.id, s.label) for s in samples] == [(t.id, t.label) for t in truth]
        assert all(s.image.tobytes() == t.image.tobytes() for s, t in zip(samples, truth))
        assert np.array_equal(noisy.cues(name), exact.cues(name))
        annotated = [(s, t) for s, t in zip(samples, truth) if t.mask is not None]
        assert annotated and all(s.mask is not None for s, _ in annotated)
        for sample, true in annotated:
            assert sample.reference.tobytes() == true.mask.tobytes()
            assert sample.mask.dtype == bool and sample.mask.shape == true.mask.shape and sample.mask.any()
            assert not np.array_equal(sample.mask, sample.reference)  # dilate alone changes every mask
        assert all(s.mask is None and s.reference is None for s, t in zip(samples, truth) if t.mask is None)
    assert_same(noisy.split("test"), exact.split("test"))
    assert all(s.reference is None for s in noisy.split("test"))
    assert all(s.reference is None for name in ("train", "val", "test") for s in exact.split(name))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_annotation_agreement_falls_as_dilation_grows(task):
    ious = [mean_iou(noisy_and_exact(task, {"dilate": radius})[0].split("train")) for radius in (1, 2, 4)]
    assert 1 > ious[0] > ious[1] > ious[2] > 0.2


def test_noise_is_deterministic_and_drawn_per_sample():
    noisy, exact = noisy_and_exact("binary", {"shift": 6})
    again, _ = noisy_and_exact("binary", {"shift": 6})
    for name in ("val", "train"):
        assert_same(noisy.split(name), again.split(name))
    moves = {tuple(np.round(np.argwhere(s.mask).mean(0) - np.argwhere(s.reference).mean(0)))
             for s in noisy.split("train") if s.mask is not None}
    assert len(moves) >= 10  # every sample its own offset


def test_noise_streams_are_per_split_and_sample():
    # Another n_test leaves train's noisy annotations as they were.
    small, _ = noisy_and_exact("multiclass", HUMAN_LIKE)
    large = SyntheticDataset(**{**small.params(), "n_test": 30})
    assert large.annotation_noise == small.annotation_noise
    assert_same(small.split("train"), large.split("train"))


def test_fraction_degrades_exactly_that_share_of_the_annotations():
    changed = {}
    for fraction in (0.25, 0.5, 1.0):
        samples = noisy_and_exact("multiclass", {"dilate": 2, "fraction": fraction})[0].split("train")
        assert all(s.reference is not None for s in samples)  # spared ones carry their (equal) reference
        changed[fraction] = np.array([not np.array_equal(s.mask, s.reference) for s in samples])
        assert changed[fraction].mean() == fraction  # 40 annotated samples: exact shares, not sampled
    assert not (changed[0.25] & ~changed[0.5]).any()
    assert 0 < changed[0.5][:20].sum() < 20  # drawn across the split, not its first half


@pytest.mark.parametrize("noise", [None, {}, {"fraction": 0.0, "dilate": 3}, AnnotationNoise(shift=0)])
def test_noise_that_changes_nothing_is_no_noise(noise):
    quiet, exact = noisy_and_exact("binary", noise)
    assert quiet.annotation_noise is None and quiet.fingerprint() == exact.fingerprint()
    for name in ("train", "val"):
        assert_same(quiet.split(name), exact.split(name))
        assert all(s.reference is None for s in quiet.split(name))


def test_fingerprint_names_the_noise_and_is_unchanged_without_it():
    # Datasets without noise keep the fingerprint they had before the option existed.
    params = dict(task="binary", n_train=240, n_val=40, n_test=120, image_size=96, seed=0, spurious=0.9,
                  num_classes=7)
    content = {"dataset": "synthetic", "generator_version": synthetic.GENERATOR_VERSION, "params": params}
    before = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert SyntheticDataset().fingerprint() == before
    dilated = SyntheticDataset(annotation_noise={"dilate": 2})
    assert dilated.params()["annotation_noise"] == {"dilate": 2.0}
    assert dilated.fingerprint() != before
    same = SyntheticDataset(annotation_noise=AnnotationNoise(dilate=2.0, fraction=1))
    assert dilated.fingerprint() == same.fingerprint()
    fingerprints = {SyntheticDataset(annotation_noise=noise).fingerprint()
                    for noise in ({"dilate": 2}, {"dilate": 3}, {"erode": 2}, {"dilate": 2, "fraction": 0.5})}
    assert len(fingerprints) == 4


def test_the_registry_coerces_noise_settings_and_rejects_bad_ones():
    registry = get_registry()
    dataset = registry.create("datasets", "synthetic", annotation_noise={"dilate": 3, "shift": "2"})
    assert dataset.annotation_noise == AnnotationNoise(dilate=3, shift=2)
    for bad, where, message in (({"dilate": -1}, "annotation_noise.dilate", "greater than or equal to 0"),
                                ({"missing": 2}, "annotation_noise.missing", "less than or equal to 1"),
                                ({"dilation": 1}, "annotation_noise", "unknown setting 'dilation' .*'dilate'"),
                                ("wide", "annotation_noise", "dictionary")):
        with pytest.raises(ComponentParamsError, match=f"{where}: .*{message}"):
            registry.create("datasets", "synthetic", annotation_noise=bad)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_noisy_dataset_keeps_the_dataset_contract(task):
    testing.check_dataset(noisy_and_exact(task, HUMAN_LIKE)[0], name=f"noisy synthetic ({task})")
