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
import threading
import warnings
from collections import OrderedDict

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples are drawn and reduced a block of this many draws at a time (the same draws as all at once), so memory
# stays at a few tens of MB whatever the number of test images.
_BLOCK_DRAWS = 1 << 22
# The count matrices of recent draws, at most this many bytes in all (a summary asks for the same draws hundreds
# of times: same seed, mostly the same number of test images).
_COUNTS_CACHE_BYTES = 64 << 20
_counts_cache: OrderedDict[tuple, tuple] = OrderedDict()
_counts_lock = threading.Lock()


def seed_means(per_image: np.ndarray) -> np.ndarray:
    """(S, N) per-image scores → (S,) per-seed means over the finite entries."""
    per_image = np.asarray(per_image, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a seed with no defined score gives NaN
        return np.nanmean(np.where(np.isfinite(per_image), per_image, np.nan), axis=1)


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """Draws ``(b, k)`` of indices in [0, n) → ``(b, n)`` counts: how often each resample drew each index."""
    counts = np.empty((len(draws), n))
    rows = max(1, (1 << 18) // max(n, 1))  # counted a few rows at a time, so a large block needs no second copy
    for start in range(0, len(draws), rows):
        part = draws[start:start + rows]
        offsets = (part + (np.arange(len(part)) * n)[:, None]).ravel()  # resample r's index i counts at r * n + i
        counts[start:start + len(part)] = np.bincount(offsets, minlength=len(part) * n).reshape(len(part), n)
    return counts


def _draw_counts(sizes: tuple[int, ...], resamples: int, seed: int, block: int):
    """Per block of resamples, one count matrix ``(b, n)`` per size: the draws ``rng.integers(0, n, (b, n))``
    of each size in turn, block after block, from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        yield tuple(_counts(rng.integers(0, n, size=(count, n)), n) for n in sizes)


def _resample_counts(sizes: tuple[int, ...], resamples: int, seed: int, block: int):
    """``_draw_counts``, kept in a byte-bounded cache (least recently used out first); draws too large for it
    are counted block by block as they are used."""
    key = (sizes, resamples, seed, block)
    with _counts_lock:
        if key in _counts_cache:
            _counts_cache.move_to_end(key)
            return _counts_cache[key]
    if resamples * sum(sizes) * 8 > _COUNTS_CACHE_BYTES:
        return _draw_counts(sizes, resamples, seed, block)
    blocks = tuple(_draw_counts(sizes, resamples, seed, block))
    for counts in blocks:
        for matrix in counts:
            matrix.setflags(write=False)
    with _counts_lock:
        _counts_cache[key] = blocks
        _counts_cache.move_to_end(key)
        while sum(m.nbytes for entry in _counts_cache.values() for c in entry for m in c) > _COUNTS_CACHE_BYTES:
            _counts_cache.popitem(last=False)
    return blocks


def _drawn_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-seed sums ``(S, b)`` of ``values`` ``(S, n)`` over each resample's draws, given as ``counts`` ``(b, n)``.

    einsum rather than ``values @ counts.T``: a product this small is no work for one core, and OpenBLAS spreads
    it over threads that spin on a busy machine (8 ms instead of 0.2 ms for 3 seeds on 2 loaded cores)."""
    return np.einsum("sn,bn->sb", values, counts)


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
    n = scores.shape[1]
    filled = np.where(finite, scores, 0.0)
    defined = None if finite.all() else finite.astype(np.float64)
    block = max(1, _BLOCK_DRAWS // max(n * len(scores), 1))
    statistic = np.empty(resamples)
    start = 0
    for (counts,) in _resample_counts((n,), resamples, seed, block):
        drawn = n if defined is None else _drawn_sums(defined, counts)  # finite images drawn (each resample draws n)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # resamples drawing only undefined images
            per_seed = _drawn_sums(filled, counts) / drawn  # (S, b); NaN where no finite image was drawn
            statistic[start:start + len(counts)] = np.nanmean(per_seed, axis=0)
        start += len(counts)
        del counts  # before the next block is counted: uncached, for many test images, it is tens of MB
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
    members = [np.flatnonzero(groups == g) for g in names]
    # Each group's mean over a resample is nanmean over its drawn images, as a sum weighted by the draw counts:
    # NaN scores are left out, an infinite one makes the mean infinite (NaN with both signs), as nanmean does.
    parts = []
    for index in members:
        values = scores[:, index]
        parts.append((np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0),
                      (~np.isnan(values)).astype(np.float64) if np.isnan(values).any() else None,
                      np.isposinf(values).astype(np.float64), np.isneginf(values).astype(np.float64)))
    infinite = np.isinf(scores).any()
    block = max(1, _BLOCK_DRAWS // max(scores.size, 1))
    draws = _resample_counts(tuple(len(i) for i in members), resamples, seed, block)
    statistic = np.empty(resamples)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        start = 0
        for counts in draws:
            per_group = []
            for (filled, defined, pos, neg), c in zip(parts, counts):
                sums = _drawn_sums(filled, c)  # (S, b)
                if infinite:
                    up, down = _drawn_sums(pos, c) > 0, _drawn_sums(neg, c) > 0
                    sums = np.where(up, np.where(down, np.nan, np.inf), np.where(down, -np.inf, sums))
                per_group.append(sums / (c.shape[1] if defined is None else _drawn_sums(defined, c)))
            statistic[start:start + len(counts[0])] = np.nanmean(np.nanmin(np.stack(per_group), axis=0), axis=0)
            start += len(counts[0])
            del counts, c  # before the next block is counted: uncached, for many test images, it is tens of MB
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
