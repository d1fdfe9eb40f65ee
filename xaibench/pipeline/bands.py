"""Per-band statistics of a dataset's images, and the ``Bands`` a run gives its components.

The statistics (mean, standard deviation, median, minimum, maximum of each band, in [0, 1]) are those of
at most ``IMAGES`` images spread evenly over the split (all of them in a smaller split), every pixel of
those: the same images give the same numbers, whatever reads them.
"""

from __future__ import annotations

import numpy as np

from xaibench.errors import StageError
from xaibench.kit.contracts import Bands

IMAGES = 256  # images a split's statistics are worked out from, evenly spaced
STD_FLOOR = 1e-3  # a constant band's standard deviation, so that normalising by it stays finite


def chosen(n: int, limit: int = IMAGES) -> np.ndarray:
    """The positions of the images statistics are worked out from: all ``n``, or ``limit`` evenly spaced."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def statistics(images) -> dict[str, np.ndarray]:
    """``mean``, ``std``, ``median``, ``min``, ``max``: float64 (C,) per band of ``images`` (N, H, W, C),
    uint8 (read as value / 255) or float in [0, 1], an array or anything indexed by an index array
    (``artifacts.Rows``). Empty images give NaN."""
    shape = tuple(images.shape)
    if shape[0] == 0 or not np.prod(shape[1:3]):
        empty = np.full(shape[-1], np.nan)
        return {name: empty.copy() for name in ("mean", "std", "median", "min", "max")}
    pixels = np.asarray(images[chosen(shape[0])]).reshape(-1, shape[-1])
    values = pixels.astype(np.float64) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float64)
    return {"mean": values.mean(axis=0), "std": values.std(axis=0), "median": np.median(values, axis=0),
            "min": values.min(axis=0), "max": values.max(axis=0)}


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
