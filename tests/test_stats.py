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
    assert bootstrap_ci(scores) == pytest.approx(tuple(expected), rel=0, abs=0)
