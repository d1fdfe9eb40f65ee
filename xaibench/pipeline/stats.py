"""Uncertainty of leaderboard numbers.

Rules (documented in the README and tested on hand-computed cases):

- A metric's value for one configuration is the mean over seeds of its per-seed mean over test images
  (images whose score is undefined, NaN, are left out of that seed's mean).
- Its 95% confidence interval is a percentile bootstrap over test images: each resample draws test
  images with replacement and applies the same draw to every seed, so the interval reflects the finite
  test set, not training noise. The spread across seeds (sample standard deviation of the per-seed means)
  is reported separately and says how much training randomness moves the number.
- A model is compared with the baseline by McNemar's exact test on paired test predictions, pooled over
  seeds by summing each seed's discordant pairs (seed s model vs seed s baseline on the same images).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def seed_means(per_image: np.ndarray) -> np.ndarray:
    """(S, N) per-image scores → (S,) per-seed means over the finite entries."""
    per_image = np.asarray(per_image, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a seed with no defined score gives NaN
        return np.nanmean(np.where(np.isfinite(per_image), per_image, np.nan), axis=1)


def bootstrap_ci(per_image: np.ndarray, *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the seed-mean of per-image scores ``(S, N)`` over the N images.

    Returns (low, high); NaN bounds when no image has a finite score."""
    scores = np.asarray(per_image, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    finite = np.isfinite(scores)
    if not finite.any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = scores.shape[1]
    filled = np.where(finite, scores, 0.0)
    # Resamples are drawn and reduced a block at a time (the same draws as all at once), so memory stays
    # at a few tens of MB whatever the number of test images.
    block = max(1, (1 << 22) // max(n * len(scores), 1))
    statistic = np.empty(resamples)
    for start in range(0, resamples, block):
        draws = rng.integers(0, n, size=(min(block, resamples - start), n))
        counts = finite[:, draws].sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # resamples drawing only undefined images
            per_seed = filled[:, draws].sum(axis=2) / counts  # (S, b); NaN where a resample has no finite image
            statistic[start:start + len(draws)] = np.nanmean(per_seed, axis=0)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(statistic, [tail, 100.0 - tail])
    return float(low), float(high)


def worst_group(per_image: np.ndarray, groups: np.ndarray) -> float:
    """The mean over seeds of each seed's lowest group mean: ``per_image`` (S, N), ``groups`` (N,) names
    ("" for no group, left out); NaN without a named group."""
    scores = np.asarray(per_image, dtype=np.float64).reshape(-1, np.shape(per_image)[-1])
    names = [g for g in np.unique(groups) if g != ""]
    if not names:
        return float("nan")
    means = np.stack([seed_means(scores[:, np.asarray(groups) == g]) for g in names])  # (G, S)
    return float(np.nanmean(np.nanmin(means, axis=0)))


def bootstrap_worst_group_ci(per_image: np.ndarray, groups: np.ndarray, *, level: float = 0.95,
                             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of ``worst_group``: each resample draws images with replacement within each
    group (so every group keeps its size) and applies the draw to every seed."""
    scores = np.asarray(per_image, dtype=np.float64).reshape(-1, np.shape(per_image)[-1])
    groups = np.asarray(groups)
    names = [g for g in np.unique(groups) if g != ""]
    if not names or not np.isfinite(scores).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in names]
    statistic = np.empty(resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        block = max(1, (1 << 22) // max(scores.size, 1))
        for start in range(0, resamples, block):
            count = min(block, resamples - start)
            per_group = []
            for index in members:
                draws = index[rng.integers(0, len(index), size=(count, len(index)))]  # (b, n_g)
                values = scores[:, draws]  # (S, b, n_g)
                per_group.append(np.nanmean(values, axis=2))  # (S, b)
            statistic[start:start + count] = np.nanmean(np.nanmin(np.stack(per_group), axis=0), axis=0)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(statistic, [tail, 100.0 - tail])
    return float(low), float(high)


def seed_spread(per_image: np.ndarray) -> float:
    """Sample standard deviation of per-seed means (NaN with fewer than two seeds)."""
    means = seed_means(per_image)
    means = means[np.isfinite(means)]
    return float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")


def mcnemar(model_correct: np.ndarray, baseline_correct: np.ndarray) -> dict:
    """McNemar's exact test of paired predictions ``(S, N)`` bool, pooled over seeds.

    ``b``: baseline right and model wrong; ``c``: model right and baseline wrong, summed over seeds.
    ``p``: two-sided exact binomial p-value of min(b, c) in b + c trials at 0.5 (1.0 when b + c = 0)."""
    model = np.asarray(model_correct, dtype=bool)
    base = np.asarray(baseline_correct, dtype=bool)
    if model.shape != base.shape:
        raise ValueError(f"paired predictions differ in shape: {model.shape} vs {base.shape}")
    b = int(np.sum(base & ~model))
    c = int(np.sum(model & ~base))
    return {"b": b, "c": c, "p": exact_binomial_two_sided(min(b, c), b + c)}


def exact_binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of ``k`` successes in ``n`` trials at probability 1/2 (the value of
    ``scipy.stats.binomtest(k, n, 0.5).pvalue``, computed exactly with integers): the probability of an
    outcome at least as far from n/2 as ``k``; 1.0 for no trials."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2**n) if 2 * low != n else 1.0


def seed_ci(values, *, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of per-seed values ``(S,)`` (NaN entries left out).

    Treats the seeds as independent draws of the training randomness; NaN bounds with fewer than two
    seeds, and a zero-width interval when every seed gives the same value."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    mean = float(values.mean())
    half = float(t.ppf(0.5 + level / 2.0, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean - half, mean + half
