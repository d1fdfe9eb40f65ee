import warnings

import numpy as np
import pytest

from xaibench.pipeline import stats


def test_bootstrap_ci_of_a_constant_has_no_width():
    assert stats.bootstrap_ci(np.ones((2, 50))) == (1.0, 1.0)


def test_bootstrap_ci_matches_the_normal_approximation_for_a_proportion():
    # 400 images, 60% correct: the normal interval is 0.6 ± 1.96 * sqrt(0.6 * 0.4 / 400) = ±0.048
    correct = np.zeros(400)
    correct[:240] = 1
    low, high = stats.bootstrap_ci(correct)
    assert low == pytest.approx(0.6 - 0.048, abs=0.01) and high == pytest.approx(0.6 + 0.048, abs=0.01)


def test_bootstrap_resamples_images_jointly_across_seeds():
    # two seeds that disagree on every image average to 0.5 on every resample: zero width
    a = np.array([1, 0] * 20, dtype=float)
    assert stats.bootstrap_ci(np.stack([a, 1 - a])) == (0.5, 0.5)


def test_nan_images_are_left_out():
    scores = np.array([[1.0, np.nan, 1.0, np.nan]])
    assert stats.seed_means(scores).tolist() == [1.0]
    assert stats.bootstrap_ci(scores) == (1.0, 1.0)
    assert np.isnan(stats.bootstrap_ci(np.full((1, 3), np.nan))[0])


def test_seed_spread_is_the_sample_sd_of_seed_means():
    scores = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # seed means 1, 0.5, 0
    assert stats.seed_spread(scores) == pytest.approx(0.5)
    assert np.isnan(stats.seed_spread(scores[:1]))


def test_mcnemar_on_hand_computed_counts():
    base = np.array([[1, 1, 1, 0, 0, 1], [1, 0, 1, 1, 1, 1]], dtype=bool)
    model = np.array([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)
    result = stats.mcnemar(model, base)
    # b (baseline right, model wrong) = 1; c (model right, baseline wrong) = 2 + 1 = 3
    assert (result["b"], result["c"]) == (1, 3)
    # exact two-sided: P(X <= 1) * 2 for X ~ Bin(4, 0.5) = 2 * 5/16
    assert result["p"] == pytest.approx(10 / 16)
    assert stats.mcnemar(base, base)["p"] == 1.0


def test_atomic_write_text_replaces_whole_files_readable_by_others(tmp_path):
    import stat

    from xaibench.kit.files import atomic_write_text

    path = tmp_path / "table.csv"
    path.write_text("old\n")
    atomic_write_text(path, "a,b\r\n1,2\n", newline="")
    assert path.read_bytes() == b"a,b\r\n1,2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary left behind


@pytest.mark.parametrize("k, n", [(0, 0), (0, 1), (0, 5), (2, 10), (5, 10), (3, 7), (4, 7), (0, 40), (17, 60),
                                  (30, 60), (123, 300)])
def test_the_exact_binomial_p_value_equals_scipys(k, n):
    from scipy.stats import binomtest

    from xaibench.pipeline.stats import exact_binomial_two_sided

    expected = 1.0 if n == 0 else binomtest(k, n, 0.5).pvalue
    assert exact_binomial_two_sided(k, n) == pytest.approx(expected, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("n", [7, 61, 3000])
def test_the_bootstrap_drawn_in_blocks_equals_drawing_every_resample_at_once(n):
    """Blocks keep memory flat for large test sets; the interval is the one of all draws at once."""
    from xaibench.pipeline.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci

    scores = np.random.default_rng(n).random((3, n))
    scores[0, ::5] = np.nan
    finite = np.isfinite(scores)
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    values = np.where(finite, scores, 0.0)[:, draws]
    statistic = np.nanmean(values.sum(axis=2) / finite[:, draws].sum(axis=2), axis=0)
    tail = (1.0 - 0.95) / 2.0 * 100.0  # as bootstrap_ci computes it (2.4999999999999996)
    expected = np.nanpercentile(statistic, [tail, 100.0 - tail])
    # the same draws; the sums over them are taken in another order (weighted by draw counts), hence rel=1e-12
    assert bootstrap_ci(scores) == pytest.approx(tuple(expected), rel=1e-12, abs=0)


def _gather_bootstrap_ci(per_image, *, resamples=stats.BOOTSTRAP_RESAMPLES, seed=stats.BOOTSTRAP_SEED):
    """bootstrap_ci as it was before the draws became cached count matrices: gather each block's draws."""
    scores = np.atleast_2d(np.asarray(per_image, dtype=np.float64))
    finite = np.isfinite(scores)
    if not finite.any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = scores.shape[1]
    filled = np.where(finite, scores, 0.0)
    block = max(1, (1 << 22) // max(n * len(scores), 1))
    statistic = np.empty(resamples)
    for start in range(0, resamples, block):
        draws = rng.integers(0, n, size=(min(block, resamples - start), n))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_seed = filled[:, draws].sum(axis=2) / finite[:, draws].sum(axis=2)
            statistic[start:start + len(draws)] = np.nanmean(per_seed, axis=0)
    low, high = np.nanpercentile(statistic, [(1.0 - 0.95) / 2.0 * 100.0, 100.0 - (1.0 - 0.95) / 2.0 * 100.0])
    return float(low), float(high)


def _gather_bootstrap_worst_group_ci(per_image, groups):
    """bootstrap_worst_group_ci as it was before the draws became cached count matrices."""
    scores = np.asarray(per_image, dtype=np.float64).reshape(-1, np.shape(per_image)[-1])
    names = [g for g in np.unique(groups) if g != ""]
    if not names or not np.isfinite(scores).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(stats.BOOTSTRAP_SEED)
    members = [np.flatnonzero(groups == g) for g in names]
    statistic = np.empty(stats.BOOTSTRAP_RESAMPLES)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        block = max(1, (1 << 22) // max(scores.size, 1))
        for start in range(0, stats.BOOTSTRAP_RESAMPLES, block):
            count = min(block, stats.BOOTSTRAP_RESAMPLES - start)
            per_group = [np.nanmean(scores[:, index[rng.integers(0, len(index), size=(count, len(index)))]], axis=2)
                         for index in members]
            statistic[start:start + count] = np.nanmean(np.nanmin(np.stack(per_group), axis=0), axis=0)
        low, high = np.nanpercentile(statistic, [(1.0 - 0.95) / 2.0 * 100.0, 100.0 - (1.0 - 0.95) / 2.0 * 100.0])
    return float(low), float(high)


def _same(got, expected, rtol=0.0):
    return np.allclose(np.array(got), np.array(expected), rtol=rtol, atol=0.0, equal_nan=True)


@pytest.fixture
def empty_draw_cache(monkeypatch):
    monkeypatch.setattr(stats, "_counts_cache", type(stats._counts_cache)())


# 4500 images: 2000 resamples' counts (72 MB) do not fit the cache and are counted block by block as used
@pytest.mark.parametrize("n", [1, 2, 7, 120, 4500])
def test_bootstrap_ci_of_0_1_scores_equals_the_gathered_draws_exactly(n, empty_draw_cache):
    rng = np.random.default_rng(n)
    correct = (rng.random((3, n)) < 0.7).astype(float)
    correct[1, ::3] = np.nan  # an image without a score for one seed
    for scores in (correct, correct[0], correct[1]):  # (S, N) and 1-D
        assert _same(stats.bootstrap_ci(scores), _gather_bootstrap_ci(scores))
    assert any(key[0] == (n,) for key in stats._counts_cache) == (n < 4000)


def test_draws_too_many_for_the_cache_are_counted_a_block_at_a_time(empty_draw_cache):
    import tracemalloc

    scores = np.random.default_rng(0).random((2, 4500))
    tracemalloc.start()
    try:
        stats.bootstrap_ci(scores)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * stats.BOOTSTRAP_RESAMPLES * 4500 * 8  # all the draws' counts at once are 72 MB
    assert not stats._counts_cache


@pytest.mark.parametrize("n", [1, 2, 7, 120, 4500])
def test_bootstrap_ci_of_real_scores_with_undefined_images_equals_the_gathered_draws(n, empty_draw_cache):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=(2, n)) * 10.0 ** rng.integers(-3, 3, size=(2, n))
    scores[rng.random((2, n)) < 0.4] = np.nan
    scores[0, -1] = np.inf  # an infinite score counts as undefined
    for per_image in (scores, scores[1]):
        assert _same(stats.bootstrap_ci(per_image), _gather_bootstrap_ci(per_image), rtol=1e-12)
    assert _same(stats.bootstrap_ci(np.full((2, n), np.nan)), (np.nan, np.nan))


def test_cached_draws_are_told_apart_by_images_seed_resamples_and_block(empty_draw_cache):
    rng = np.random.default_rng(3)
    calls = [(120, 2, 0, 2000), (37, 2, 0, 2000), (120, 2, 1, 2000), (120, 2, 0, 500), (37, 2, 0, 2000),
             (3000, 1, 0, 2000), (3000, 3, 0, 2000), (120, 2, 0, 2000), (3000, 1, 0, 2000)]  # 3000: 1 vs 5 blocks
    for n, seeds, seed, resamples in calls:
        scores = rng.random((seeds, n))
        scores[0, ::4] = np.nan
        got = stats.bootstrap_ci(scores, seed=seed, resamples=resamples)
        assert _same(got, _gather_bootstrap_ci(scores, seed=seed, resamples=resamples), rtol=1e-12), (n, seed)


def test_the_draw_cache_keeps_to_its_byte_bound_dropping_the_least_recently_used(empty_draw_cache, monkeypatch):
    monkeypatch.setattr(stats, "_COUNTS_CACHE_BYTES", 2 * 2000 * 100 * 8)  # two sets of draws of 100 images
    scores = {n: (np.random.default_rng(n).random((2, n)) < 0.5).astype(float) for n in (100, 90, 80)}
    for n in (100, 90, 100, 80):
        assert _same(stats.bootstrap_ci(scores[n]), _gather_bootstrap_ci(scores[n]))
    assert [key[0] for key in stats._counts_cache] == [(100,), (80,)]  # 90 was the least recently used
    assert sum(m.nbytes for entry in stats._counts_cache.values() for c in entry for m in c) <= 2 * 2000 * 100 * 8


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the percentile of infinite resamples
@pytest.mark.parametrize("n", [3, 40, 301])
def test_bootstrap_worst_group_ci_equals_the_gathered_draws(n, empty_draw_cache):
    rng = np.random.default_rng(n)
    groups = rng.permutation(np.resize(["a", "a", "b", "a", "c", "", "b"], n))  # groups of unequal sizes
    correct = (rng.random((3, n)) < 0.6).astype(float)
    assert _same(stats.bootstrap_worst_group_ci(correct, groups), _gather_bootstrap_worst_group_ci(correct, groups))
    assert _same(stats.bootstrap_worst_group_ci(correct[0], groups),
                 _gather_bootstrap_worst_group_ci(correct[0], groups))
    scores = rng.random((2, n))
    scores[rng.random((2, n)) < 0.3] = np.nan
    assert _same(stats.bootstrap_worst_group_ci(scores, groups), _gather_bootstrap_worst_group_ci(scores, groups),
                 rtol=1e-12)
    scores[0, 1], scores[1, 1], scores[1, 5 % n] = np.inf, -np.inf, np.inf  # nanmean's infinities, kept as they were
    assert _same(stats.bootstrap_worst_group_ci(scores, groups), _gather_bootstrap_worst_group_ci(scores, groups),
                 rtol=1e-12)
