"""Faithfulness: whether the pixels a saliency map marks are the ones the model's prediction depends on.

Localisation metrics (``xaibench.pipeline.metrics``) compare a map with a ground-truth mask; these compare it with
the model. Each takes float32 images (B, C, H, W) in [0, 1], maps (B, H, W), target classes (B,) and a
model in eval mode, and gives one score per image:

- **deletion AUC** (Petsiuk et al., "RISE", 2018): the pixels are removed most-salient first in ``steps``
  equal steps, each removed pixel replaced by the same pixel of a Gaussian blur of the image; the area
  under the target class's softmax probability against the removed share (trapezoid rule, x in [0, 1]).
  Lower is more faithful: the prediction collapses when what the map marks is gone.
- **insertion AUC**: the converse, starting from the blurred image and putting the original pixels back
  most-salient first. Higher is more faithful.
- **ROAD** (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML
  2022), as pytorch-grad-cam computes it (``pytorch_grad_cam.metrics.road.ROADCombined``; the same
  equations and noise, about 5x faster on CPU, and a test holds the two equal): at each
  percentile the most (MoRF) or least (LeRF) relevant pixels are replaced by a noisy linear imputation
  of their neighbours, which removes the information without leaving the shape of the removed region
  for the model to read; the score is the mean over percentiles of (LeRF drop − MoRF drop) / 2 in the
  target's softmax probability. Higher is more faithful.

Pixels that tie in saliency are removed in raster order, so a constant map removes the image row by row.
"""

from __future__ import annotations

import math

import numpy as np


def subset(n: int, images: int) -> np.ndarray:
    """The positions of ``images`` of ``n`` explained images, evenly spaced (all of them for 0 or ``n`` or
    more), in order."""
    if images <= 0 or images >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, images).round().astype(np.int64))


def blur(images):
    """A Gaussian blur of (B, C, H, W) images, band by band: sigma 5 px at 224 px, scaled with the image's shorter side
    (at least 1 px), kernel ±3 sigma."""
    from torchvision.transforms.functional import gaussian_blur

    side = min(images.shape[-2:])
    sigma = max(1.0, 5.0 * side / 224.0)
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * ((side - 1) // 2) + 1)  # odd, and its padding fits the image
    if kernel < 3:
        return images.clone()
    return gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def salient_ranks(maps: np.ndarray) -> np.ndarray:
    """int64 (B, H, W): each pixel's rank in its map, 0 for the most salient; ties in raster order."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :].repeat(len(flat), axis=0), axis=1)
    return ranks.reshape(np.shape(maps))


def _probabilities(model, batch, targets, batch_size: int) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            logits = model(batch[start : start + batch_size]).float()
            out.append(torch.softmax(logits, dim=1).gather(1, targets[start : start + batch_size, None])[:, 0])
    return torch.cat(out).cpu().numpy().astype(np.float64)


def area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area of (B, steps + 1) curves sampled at equal steps over [0, 1]."""
    steps = curves.shape[1] - 1
    return (curves.sum(axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / steps


def references(model, images, targets, *, batch_size: int = 64) -> dict:
    """What every map of the same images is measured from: the blurred images and the target's
    probability on the images whole and blurred (``blurred``, ``whole``, ``none``)."""
    blurred = blur(images)
    return {"blurred": blurred, "whole": _probabilities(model, images, targets, batch_size),
            "none": _probabilities(model, blurred, targets, batch_size)}


def deletion_insertion(model, images, maps: np.ndarray, targets, *, steps: int, batch_size: int = 64,
                       reference: dict | None = None):
    """``(deletion, insertion)``: float64 (B,) areas and the float64 (B, steps + 1) curves behind them
    (``(deletion_auc, insertion_auc, deletion_curve, insertion_curve)``); ``reference``: ``references`` of
    the same images, when several maps of them are measured."""
    import torch

    n_pixels = images.shape[-2] * images.shape[-1]
    ranks = torch.from_numpy(salient_ranks(maps)).to(images.device)[:, None]
    reference = reference or references(model, images, targets, batch_size=batch_size)
    blurred, whole, none = reference["blurred"], reference["whole"], reference["none"]
    counts = [round(k * n_pixels / steps) for k in range(steps + 1)]
    deletion = np.empty((len(images), steps + 1))
    insertion = np.empty((len(images), steps + 1))
    deletion[:, 0], deletion[:, -1] = whole, none
    insertion[:, 0], insertion[:, -1] = none, whole
    for k in range(1, steps):
        top = ranks < counts[k]  # (B, 1, H, W): the k steps' most salient pixels
        deletion[:, k] = _probabilities(model, torch.where(top, blurred, images), targets, batch_size)
        insertion[:, k] = _probabilities(model, torch.where(top, images, blurred), targets, batch_size)
    return area(deletion), area(insertion), deletion, insertion


def road_percentiles(steps: int) -> list[float]:
    """The removal percentiles of ROAD for ``steps``: 100·k/steps for k = 1 .. steps − 1 (steps 10 gives
    pytorch-grad-cam's default 10, 20, ..., 90)."""
    return [100.0 * k / steps for k in range(1, steps)]


# ROAD's noisy linear imputation: each removed pixel is the weighted mean of its 8 neighbours (known pixels
# enter as constants, removed ones as unknowns of one sparse linear system), plus Gaussian noise of sd 0.01.
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
NOISE = 0.01


def impute(image, known: np.ndarray):
    """``image`` (C, H, W), a float32 CPU tensor, with the pixels where ``known`` (H, W) is False replaced
    by ROAD's noisy linear imputation: the same equations as pytorch-grad-cam's ``NoisyLinearImputer``
    (whose noise is drawn the same way, from torch's global generator), with the sparse system assembled
    in one step rather than entry by entry."""
    import torch
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    flat = np.asarray(known, dtype=bool).reshape(-1)
    unknown = np.flatnonzero(~flat)
    n = len(unknown)
    if n == 0:
        return image.clone()
    pixels = image.reshape(channels, -1).numpy()
    variable = np.zeros(flat.size, dtype=np.int64)
    variable[unknown] = np.arange(n)
    rows, cols = unknown // width, unknown % width
    b = np.zeros((n, channels))
    weight_sum = np.ones(n)
    entries_r, entries_c, entries_w = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        valid = (r >= 0) & (c >= 0) & (r < height) & (c < width)
        ids = np.flatnonzero(valid)
        coords = (unknown + dr * width + dc)[valid]
        has = flat[coords]
        b[ids[has], :] -= weight * pixels[:, coords[has]].T
        entries_r.append(ids[~has])
        entries_c.append(variable[coords[~has]])
        entries_w.append(np.full(int((~has).sum()), weight))
        weight_sum[~valid] -= weight
    system = coo_matrix((np.concatenate(entries_w), (np.concatenate(entries_r), np.concatenate(entries_c))),
                        shape=(n, n)) + diags(-weight_sum)
    solved = torch.tensor(np.asarray(spsolve(system.tocsc(), b)).reshape(n, channels), dtype=torch.float)
    out = image.reshape(channels, -1).clone()
    out[:, unknown] = solved.t() + NOISE * torch.randn_like(solved.t())
    return out.reshape_as(image)


def _removed(image, saliency: np.ndarray, percentile: float):
    """ROAD's removal at one percentile: the pixels at or above the map's ``percentile``-th percentile are
    imputed (pass ``1 - map`` to remove the least relevant ones)."""
    return impute(image, saliency < np.percentile(saliency, percentile))


def road(model, images, maps: np.ndarray, targets, *, steps: int, seed: int = 0, batch_size: int = 64,
         before: np.ndarray | None = None) -> np.ndarray:
    """float64 (B,) ROAD scores at ``road_percentiles(steps)``, as pytorch-grad-cam's ``ROADCombined`` with
    ``ClassifierOutputSoftmaxTarget`` computes them: the mean over percentiles of the change in the target's
    softmax probability when the least relevant pixels are imputed, minus the same when the most relevant
    are, halved. The imputation noise is drawn from ``seed``, in the library's order (least relevant first,
    percentile by percentile, image by image). ``before``: the target's probability on the images whole,
    where it is known already."""
    import torch

    if steps < 2:
        return np.full(len(images), np.nan)
    before = before if before is not None else _probabilities(model, images, targets, batch_size)
    cpu = images.detach().float().cpu()
    saliency = np.asarray(maps, dtype=np.float32)
    drops = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for order, relevance in (("least", 1 - saliency), ("most", saliency)):
            total = np.zeros(len(images))
            for percentile in road_percentiles(steps):
                imputed = torch.stack([_removed(cpu[i], relevance[i], percentile) for i in range(len(cpu))])
                total += _probabilities(model, imputed.to(images.device), targets, batch_size) - before
            drops[order] = total / (steps - 1)
    return (drops["least"] - drops["most"]) / 2


def scores(model, images, maps: np.ndarray, targets, *, steps: int, seed: int = 0, batch_size: int = 64,
           reference: dict | None = None) -> dict:
    """Every faithfulness score of a batch: ``{"deletion", "insertion", "road"}`` → float64 (B,);
    ``reference``: ``references`` of the same images, shared by every map of them measured."""
    reference = reference or references(model, images, targets, batch_size=batch_size)
    deletion, insertion, _, _ = deletion_insertion(model, images, maps, targets, steps=steps, batch_size=batch_size,
                                                   reference=reference)
    return {"deletion": deletion, "insertion": insertion,
            "road": road(model, images, maps, targets, steps=steps, seed=seed, batch_size=batch_size,
                         before=reference["whole"])}
