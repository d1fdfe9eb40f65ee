"""Per-band statistics of a dataset's images, and the ``Bands`` a run gives its components.

The statistics (mean, standard deviation, median, minimum, maximum of each band, in [0, 1]) are those of
at most ``IMAGES`` images spread evenly over the split (all of them in a smaller split), every pixel of
those, read a few images at a time: the same images give the same numbers, whatever reads them, and the
memory they need does not grow with the image size.
"""

from __future__ import annotations

import numpy as np

from xaibench.errors import StageError
from xaibench.kit.contracts import Bands

IMAGES = 256  # images a split's statistics are worked out from, evenly spaced
STD_FLOOR = 1e-3  # a constant band's standard deviation, so that normalising by it stays finite
FLOAT_BINS = 1 << 16  # histogram bins of float bands, in which the median's neighbours are then sorted


def chosen(n: int, limit: int = IMAGES) -> np.ndarray:
    """The positions of the images statistics are worked out from: all ``n``, or ``limit`` evenly spaced."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def statistics(images, *, chunk: int = 16) -> dict[str, np.ndarray]:
    """``mean``, ``std``, ``median``, ``min``, ``max``: float64 (C,) per band of ``images`` (N, H, W, C),
    uint8 (read as value / 255) or float in [0, 1], an array or anything indexed by an index array
    (``artifacts.Rows``), over every pixel of the images ``chosen`` (what ``numpy`` gives on those pixels
    together; the median is exact). Read ``chunk`` images at a time, through per-band histograms, so the
    memory needed is a chunk's, whatever the image size. Empty images give NaN."""
    shape = tuple(images.shape)
    channels = shape[-1]
    if shape[0] == 0 or not np.prod(shape[1:3]):
        empty = np.full(channels, np.nan)
        return {name: empty.copy() for name in ("mean", "std", "median", "min", "max")}
    rows = chosen(shape[0])

    def blocks():  # the chosen images' pixels (n, C), a chunk of images at a time; read again for a float median
        for i in range(0, len(rows), chunk):
            yield np.asarray(images[rows[i:i + chunk]]).reshape(-1, channels)

    integer = np.dtype(images.dtype) == np.uint8
    bins = 256 if integer else FLOAT_BINS
    counts = np.zeros((channels, bins), np.int64)
    total, squares = np.zeros(channels), np.zeros(channels)
    low, high = np.full(channels, np.inf), np.full(channels, -np.inf)
    for block in blocks():
        if integer:  # sums, extremes and median all come from the 256 values' counts
            which = block
        else:
            values = block.astype(np.float64)
            total += values.sum(axis=0)
            squares += np.square(values).sum(axis=0)
            low, high = np.minimum(low, values.min(axis=0)), np.maximum(high, values.max(axis=0))
            which = np.minimum((values * bins).astype(np.int64), bins - 1)
        for band in range(channels):
            counts[band] += np.bincount(which[:, band], minlength=bins)
    n = counts[0].sum()
    if integer:
        levels = np.arange(256) / 255.0
        total, squares = counts @ levels, counts @ np.square(levels)
        present = counts > 0
        low = np.array([levels[np.flatnonzero(row)[0]] for row in present])
        high = np.array([levels[np.flatnonzero(row)[-1]] for row in present])
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - np.square(mean), 0.0))
    # the median is the mean of the order statistics (n - 1) // 2 and n // 2, each found in its histogram bin
    ranks = ((n - 1) // 2, n // 2)
    median = np.empty(channels)
    for band in range(channels):
        cumulative = np.cumsum(counts[band])
        found = [int(np.searchsorted(cumulative, rank, side="right")) for rank in ranks]
        if integer:
            median[band] = (found[0] / 255.0 + found[1] / 255.0) / 2
            continue
        wanted = sorted(set(found))
        inside = np.sort(np.concatenate([
            block[:, band][np.isin(np.minimum((block[:, band].astype(np.float64) * bins).astype(np.int64), bins - 1),
                                   wanted)].astype(np.float64) for block in blocks()]))
        before = {b: (cumulative[b - 1] if b else 0) for b in wanted}  # values below each wanted bin
        offset = {b: sum(counts[band][w] for w in wanted if w < b) for b in wanted}  # of ``inside``, in earlier bins
        picks = [inside[offset[b] + rank - before[b]] for b, rank in zip(found, ranks)]
        median[band] = (picks[0] + picks[1]) / 2
    return {"mean": mean, "std": std, "median": median, "min": low, "max": high}


def declared(split: dict) -> Bands:
    """The bands a data split's arrays record (``band_names``, ``composite`` and the statistics the dataset
    declared), or RGB's for a split written before bands were recorded."""
    if "band_names" not in split:
        return Bands.rgb3()
    found = {name: tuple(split[f"band_{name}"].tolist()) for name in ("mean", "std", "median")
             if f"band_{name}" in split}
    return Bands(tuple(str(n) for n in split["band_names"]), tuple(int(i) for i in split["composite"]), **found)


def of_split(split: dict) -> Bands:
    """The ``Bands`` of a data split (its training split, in a run) with every statistic: those the dataset
    declared, the others worked out from its images (a constant band's std taken as ``STD_FLOOR``)."""
    bands = declared(split)
    channels = split["images"].shape[-1]
    if channels != bands.count:
        raise StageError(f"the data's images have {channels} channels but its bands are {bands.describe()}; the cached "
                         f"data is damaged: delete the run folder's cache/data/ and run the same command again")
    if bands.mean is not None and bands.std is not None and bands.median is not None:
        return bands
    found = statistics(split["images"])
    std = np.maximum(np.nan_to_num(found["std"], nan=1.0), STD_FLOOR)
    return bands.with_statistics(np.nan_to_num(found["mean"], nan=0.5), np.minimum(std, 1.0),
                                 np.nan_to_num(found["median"], nan=0.5))
