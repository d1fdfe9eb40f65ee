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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xaibench.pipeline.memo import digest


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


class Probe:
    """The target class's softmax probability under a model, for batches of images, in forward passes of
    ``batch_size`` images (under ``torch.inference_mode``).

    ``networks``: ``(key, module)`` pairs, the networks the model runs, each with a key naming its weights;
    ``mix``: for an ensemble, the rule taking the networks' logits in that order to the model's (None for
    one network). ``memo`` (a ``xaibench.pipeline.memo.Memo``): where a batch is marked ``shared`` (the
    chance maps' perturbations, the same for every model of the same images) each network's logits are kept
    under its key, so a network met again in another stage of the process (the baseline as an ensemble's
    raw member, one masked member under several α) is not run on them again; the images of such a batch
    are made only when a network misses."""

    def __init__(self, networks, mix=None, *, batch_size: int = 64, memo=None):
        self.networks = list(networks)
        self.mix = mix
        self.batch_size = batch_size
        self.memo = memo

    @classmethod
    def of(cls, model, batch_size: int = 64) -> Probe:
        """``model`` itself when it is a probe already, else a probe of it as one network."""
        return model if isinstance(model, cls) else cls([("", model)], batch_size=batch_size)

    def __call__(self, batch, targets, *, shared: bytes | None = None) -> np.ndarray:
        """float64 (N,): the probability of ``targets`` (N,) for ``batch``, (N, C, H, W) images or, with
        ``shared``, a function making them (called at most once, and only where a network's logits are not
        remembered)."""
        import torch

        made = []

        def images():
            if not made:
                made.append(batch() if callable(batch) else batch)
            return made[0]

        out = []
        n = len(targets)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                end = min(start + self.batch_size, n)
                logits = [self._logits(key, network, images, start, end, shared, targets.device)
                          for key, network in self.networks]
                mixed = logits[0] if self.mix is None else self.mix(*logits)
                out.append(torch.softmax(mixed.float(), dim=1).gather(1, targets[start:end, None])[:, 0])
        return torch.cat(out).cpu().numpy().astype(np.float64)

    def _logits(self, key, network, images, start, end, shared, device):
        import torch

        if shared is None or self.memo is None:
            return network(images()[start:end])
        call = digest(shared, key, start, end)
        found = self.memo.get(call)
        if found is not None:
            return torch.from_numpy(found[0]).to(device)
        logits = network(images()[start:end])
        self.memo.put(call, logits.detach().cpu().numpy())
        return logits


def area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area of (B, steps + 1) curves sampled at equal steps over [0, 1]."""
    steps = curves.shape[1] - 1
    return (curves.sum(axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / steps


def references(model, images, targets, *, batch_size: int = 64, shared: bytes | None = None) -> dict:
    """What every map of the same images is measured from: the blurred images and the target's
    probability on the images whole and blurred (``blurred``, ``whole``, ``none``). ``model``: a module or
    a ``Probe``; ``shared``: a digest naming the images, where a probe may remember its networks' logits."""
    probe = Probe.of(model, batch_size)
    blurred = blur(images)
    return {"blurred": blurred, "whole": probe(images, targets, shared=_tag(shared, "whole")),
            "none": probe(blurred, targets, shared=_tag(shared, "none"))}


def _tag(shared: bytes | None, *parts) -> bytes | None:
    """The digest of one perturbed batch of the images ``shared`` names (None where nothing is shared)."""
    return None if shared is None else digest(shared, *parts)


def deletion_insertion(model, images, maps: np.ndarray, targets, *, steps: int, batch_size: int = 64,
                       reference: dict | None = None, shared: bytes | None = None):
    """``(deletion, insertion)``: float64 (B,) areas and the float64 (B, steps + 1) curves behind them
    (``(deletion_auc, insertion_auc, deletion_curve, insertion_curve)``); ``reference``: ``references`` of
    the same images, when several maps of them are measured. ``model``: a module or a ``Probe``;
    ``shared``: a digest naming the images and these maps, where the probe may remember logits."""
    import torch

    probe = Probe.of(model, batch_size)
    n_pixels = images.shape[-2] * images.shape[-1]
    ranks = torch.from_numpy(salient_ranks(maps)).to(images.device)[:, None]
    reference = reference or references(probe, images, targets)
    blurred, whole, none = reference["blurred"], reference["whole"], reference["none"]
    counts = [round(k * n_pixels / steps) for k in range(steps + 1)]
    deletion = np.empty((len(images), steps + 1))
    insertion = np.empty((len(images), steps + 1))
    deletion[:, 0], deletion[:, -1] = whole, none
    insertion[:, 0], insertion[:, -1] = none, whole
    for k in range(1, steps):
        top = ranks < counts[k]  # (B, 1, H, W): the k steps' most salient pixels
        deletion[:, k] = probe(lambda top=top: torch.where(top, blurred, images), targets,
                               shared=_tag(shared, "deletion", steps, k))
        insertion[:, k] = probe(lambda top=top: torch.where(top, images, blurred), targets,
                                shared=_tag(shared, "insertion", steps, k))
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


def noise_for(n: int, channels: int):
    """The imputation noise of ``n`` removed pixels, (C, n), drawn from torch's global generator as
    pytorch-grad-cam's ``NoisyLinearImputer`` draws it (``randn_like`` of the transposed (n, C) solution,
    which SciPy's ``spsolve`` returns in column-major order, so its transpose is a contiguous (C, n))."""
    import torch

    return NOISE * torch.randn(channels, n)


def impute(image, known: np.ndarray, noise=None):
    """``image`` (C, H, W), a float32 CPU tensor, with the pixels where ``known`` (H, W) is False replaced
    by ROAD's noisy linear imputation: the same equations as pytorch-grad-cam's ``NoisyLinearImputer``
    (whose noise is drawn the same way, from torch's global generator, where ``noise`` is not given:
    ``noise_for`` draws it ahead), with the sparse system assembled in one step rather than entry by entry."""
    import torch
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    flat = np.asarray(known, dtype=bool).reshape(-1)
    unknown = np.flatnonzero(~flat)
    n = len(unknown)
    if n == 0:
        return image.clone()
    noise = noise_for(n, channels) if noise is None else noise
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
    out[:, unknown] = solved.t() + noise
    return out.reshape_as(image)


class RoadImages:
    """The images ROAD measures for one batch: ``get(order, j)`` is the batch (B, C, H, W), CPU float32,
    with its ``order`` ("least" or "most") relevant pixels at ``road_percentiles(steps)[j]`` imputed.

    The noise of every imputation is drawn when the object is made, from ``seed`` and in the library's
    order (least relevant first, percentile by percentile, image by image), so the images are the same
    whichever are made and in whatever order; each is made when first asked for (its images' systems
    solved in parallel). ``memo`` keeps made
    batches under ``shared`` (a digest naming the images and maps) for another stage with the same ones."""

    ORDERS = ("least", "most")

    def __init__(self, images, maps: np.ndarray, *, steps: int, seed: int, shared: bytes | None = None,
                 memo=None):
        import torch

        self.images = images.detach().float().cpu()
        saliency = np.asarray(maps, dtype=np.float32)
        self.relevance = {"least": 1 - saliency, "most": saliency}
        self.percentiles = road_percentiles(steps)
        self.shared, self.memo, self.steps, self.seed = shared, memo, steps, seed
        channels = self.images.shape[1]
        self.known, self.noise = {}, {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for order in self.ORDERS:
                for j, percentile in enumerate(self.percentiles):
                    for i, relevance in enumerate(self.relevance[order]):
                        known = relevance < np.percentile(relevance, percentile)
                        self.known[order, j, i] = known
                        self.noise[order, j, i] = noise_for(int(known.size - known.sum()), channels)

    def get(self, order: str, j: int):
        import torch

        call = _tag(self.shared, "road", self.steps, self.seed, order, j)
        if call is not None and self.memo is not None and (found := self.memo.get(call)) is not None:
            return torch.from_numpy(found[0])
        def one(i):
            return impute(self.images[i], self.known[order, j, i], self.noise[order, j, i])

        # SciPy's sparse solver releases the GIL: the images' systems are solved on torch's threads at once
        # (their noise is drawn already, so the order they finish in changes nothing).
        workers = min(torch.get_num_threads(), len(self.images))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                made = torch.stack(list(pool.map(one, range(len(self.images)))))
        else:
            made = torch.stack([one(i) for i in range(len(self.images))])
        if call is not None and self.memo is not None:
            self.memo.put(call, made.numpy())
        return made


def road(model, images, maps: np.ndarray, targets, *, steps: int, seed: int = 0, batch_size: int = 64,
         before: np.ndarray | None = None, shared: bytes | None = None, memo=None) -> np.ndarray:
    """float64 (B,) ROAD scores at ``road_percentiles(steps)``, as pytorch-grad-cam's ``ROADCombined`` with
    ``ClassifierOutputSoftmaxTarget`` computes them: the mean over percentiles of the change in the target's
    softmax probability when the least relevant pixels are imputed, minus the same when the most relevant
    are, halved. The imputation noise is drawn from ``seed``, in the library's order (least relevant first,
    percentile by percentile, image by image). ``before``: the target's probability on the images whole,
    where it is known already. ``model``: a module or a ``Probe``; ``shared``: a digest naming the images
    and these maps, where the probe may remember logits and ``memo`` the imputed images
    (``RoadImages``)."""
    if steps < 2:
        return np.full(len(images), np.nan)
    probe = Probe.of(model, batch_size)
    before = before if before is not None else probe(images, targets)
    imputed = RoadImages(images, maps, steps=steps, seed=seed, shared=shared, memo=memo)
    drops = {}
    for order in RoadImages.ORDERS:
        total = np.zeros(len(images))
        for j in range(steps - 1):
            total += probe(lambda order=order, j=j: imputed.get(order, j).to(images.device), targets,
                           shared=_tag(shared, "road", steps, seed, order, j)) - before
        drops[order] = total / (steps - 1)
    return (drops["least"] - drops["most"]) / 2


def scores(model, images, maps: np.ndarray, targets, *, steps: int, seed: int = 0, batch_size: int = 64,
           reference: dict | None = None, shared: bytes | None = None, memo=None) -> dict:
    """Every faithfulness score of a batch: ``{"deletion", "insertion", "road"}`` → float64 (B,);
    ``reference``: ``references`` of the same images, shared by every map of them measured; ``model``: a
    module or a ``Probe``; ``shared``: a digest naming the images and these maps, where the probe may
    remember its networks' logits and ``memo`` ROAD's imputed images (maps that do not depend on the
    model, such as the chance level's random maps)."""
    probe = Probe.of(model, batch_size)
    reference = reference or references(probe, images, targets, shared=shared)
    deletion, insertion, _, _ = deletion_insertion(probe, images, maps, targets, steps=steps, reference=reference,
                                                   shared=shared)
    return {"deletion": deletion, "insertion": insertion,
            "road": road(probe, images, maps, targets, steps=steps, seed=seed, before=reference["whole"],
                         shared=shared, memo=memo)}
