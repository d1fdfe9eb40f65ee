"""``xaibench.kit.splits.grouped_stratified_split``: whole groups to splits, each split about its fraction of
every class, the same answer for the same groups whatever order they come in."""

from collections import Counter

import numpy as np
import pytest

from xaibench.kit.splits import grouped_stratified_split

FRACTIONS = {"train": 0.65, "val": 0.15, "test": 0.2}


def land_cover_blocks(n=300, classes=7, seed=0):
    """``n`` groups of 64 samples, each mostly one or two classes, as blocks of land cover are."""
    rng = np.random.default_rng(seed)
    return {f"block{i:03d}": {label: int(c) for label, c in enumerate(rng.multinomial(64, rng.dirichlet(
        np.full(classes, 0.3)))) if c} for i in range(n)}


def equal_groups(n=40, size=5):
    """``n`` groups of ``size`` samples, a third of them of class True: only the seed orders them."""
    return {f"p{p:02d}": dict(Counter((p + i) % 3 == 0 for i in range(size))) for p in range(n)}


def per_split(counts, assignment):
    """split -> Counter of labels over the groups assigned to it."""
    out = {}
    for group, split in assignment.items():
        out.setdefault(split, Counter()).update(counts[group])
    return out


def test_every_group_goes_whole_to_one_named_split():
    counts = land_cover_blocks(50)
    assignment = grouped_stratified_split(counts, FRACTIONS, 0)
    assert sorted(assignment) == sorted(counts)
    assert set(assignment.values()) == set(FRACTIONS)


def test_the_result_depends_on_the_contents_not_the_order_they_come_in():
    counts = equal_groups()
    first = grouped_stratified_split(counts, FRACTIONS, 3)
    reordered = {group: dict(reversed(list(labels.items()))) for group, labels in reversed(list(counts.items()))}
    assert grouped_stratified_split(reordered, FRACTIONS, 3) == first
    assert grouped_stratified_split(counts, dict(FRACTIONS), 3) == first  # and again: no hidden state


def test_the_seed_orders_groups_of_equal_size_only():
    counts = equal_groups()
    assert grouped_stratified_split(counts, FRACTIONS, 4) != grouped_stratified_split(counts, FRACTIONS, 3)
    # all sizes distinct: largest first leaves the seed nothing to order
    distinct = {f"g{i:02d}": {"a": i + 1, "b": (3 * i) % 7 + 1} for i in range(30)}
    assert len({sum(c.values()) for c in distinct.values()}) == 30
    assert all(grouped_stratified_split(distinct, FRACTIONS, seed) == grouped_stratified_split(distinct, FRACTIONS, 0)
               for seed in range(1, 6))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_split_holds_its_fraction_of_every_class(seed):
    counts = land_cover_blocks(seed=seed)
    assignment = grouped_stratified_split(counts, FRACTIONS, seed)
    totals = sum((Counter(c) for c in counts.values()), Counter())
    got = per_split(counts, assignment)
    for split, fraction in FRACTIONS.items():
        shares = [got[split][label] / totals[label] for label in sorted(totals)]
        np.testing.assert_allclose(shares, fraction, atol=0.02, err_msg=split)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_rare_class_is_spread_like_a_common_one(seed):
    # a fifth of the groups hold 1-3 rare samples beside 20-60 common ones: weighing shortfalls by count
    # alone would trade the rare class away for the common one
    rng = np.random.default_rng(seed)
    counts = {}
    for i in range(200):
        counts[f"g{i:03d}"] = {"common": int(rng.integers(20, 60))}
        if rng.random() < 0.2:
            counts[f"g{i:03d}"]["rare"] = int(rng.integers(1, 4))
    got = per_split(counts, grouped_stratified_split(counts, FRACTIONS, seed))
    totals = sum((Counter(c) for c in counts.values()), Counter())
    assert totals["rare"] > 60
    for split, fraction in FRACTIONS.items():
        for label in ("common", "rare"):
            assert abs(got[split][label] / totals[label] - fraction) <= 0.03, (split, label, got)


def test_a_split_with_fraction_zero_gets_no_group():
    counts = land_cover_blocks(60)
    assignment = grouped_stratified_split(counts, {"train": 0.8, "val": 0.0, "test": 0.2}, 0)
    assert set(assignment.values()) == {"train", "test"}
    assert set(grouped_stratified_split(counts, {"train": 1.0, "val": 0.0}, 5).values()) == {"train"}


def test_every_split_with_a_fraction_gets_a_group_when_there_are_enough():
    # shortfall alone would put every group in train: val and test want 2 samples, a group has 10
    counts = {f"g{i}": {0: 10} for i in range(4)}
    assignment = grouped_stratified_split(counts, {"train": 0.9, "val": 0.05, "test": 0.05}, 0)
    assert sorted(Counter(assignment.values()).items()) == [("test", 1), ("train", 2), ("val", 1)]
    exact = grouped_stratified_split({"a": {0: 50}, "b": {0: 1}, "c": {0: 1}}, FRACTIONS, 0)
    assert sorted(exact.values()) == ["test", "train", "val"]


def test_fewer_groups_than_splits_each_get_a_split_of_their_own():
    assert grouped_stratified_split({"only": {"x": 3}}, FRACTIONS, 0) == {"only": "train"}
    two = grouped_stratified_split({"big": {"x": 30}, "small": {"x": 2}}, FRACTIONS, 0)
    assert two["big"] == "train" and two["small"] in ("val", "test")
    assert grouped_stratified_split({}, FRACTIONS, 0) == {}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        grouped_stratified_split({"a": {0: 1}}, {"train": 0.7, "test": 0.2}, 0)
    with pytest.raises(ValueError, match="summing to 1"):
        grouped_stratified_split({"a": {0: 1}}, {"train": 1.2, "test": -0.2}, 0)
    with pytest.raises(ValueError, match="'b' holds no samples"):
        grouped_stratified_split({"a": {0: 1}, "b": {0: 0}}, FRACTIONS, 0)
    with pytest.raises(ValueError, match="negative"):
        grouped_stratified_split({"a": {0: 2, 1: -1}}, FRACTIONS, 0)
