"""The explanation sanity check: Adebayo et al.'s model-parameter randomisation test (NeurIPS 2018).

An explanation that explains the model must change when the model's learned weights are destroyed. The
``sanity`` stage re-initialises the top of the explained network — the backbone's CAM target layer and
every module after it (for ResNet18: ``layer4`` and the ``fc`` head; for a timm ViT: the last block, the
final norm and the head) — explains the same images again with the same explainer, and compares each
image's two maps:

- ``sanity_spearman``: Spearman's rank correlation of the maps' pixels (as Adebayo et al. and Quantus's
  ``MPRT``, without the absolute value: a map that inverts is a changed map);
- ``sanity_ssim``: the structural similarity of the maps (``skimage.metrics.structural_similarity``,
  data range 1, the maps being in [0, 1]).

NaN where either map is constant. High similarity is a failure: an explainer whose mean Spearman is above
``UNCHANGED_SPEARMAN`` is marked in the tables as not depending on the model's top layers (the random,
centre and oracle baselines, which ignore the model, are the reference: 1.0).

The re-initialisation follows Quantus's cascading ("top_down") order and seeding: the modules that have
``reset_parameters`` (convolutions, linear and normalisation layers), from the last one backwards, each
reset right after ``torch.manual_seed(seed + 1)``; so the randomised network is exactly Quantus's MPRT
model after as many of its steps as there are such modules from the target layer on.
"""

from __future__ import annotations

import numpy as np

from xaibench.pipeline import schema

# Above this mean Spearman the maps barely change when the top layers are re-initialised: marked.
UNCHANGED_SPEARMAN = 0.9
SEED = 42  # Quantus's default MPRT seed


def randomise_top_layers(network, target_layers, *, seed: int = SEED) -> list[str]:
    """Re-initialise, in place, every module of ``network`` from the first of ``target_layers`` it holds
    onwards (in ``network.modules()`` order), cascading from the top as Quantus's MPRT does. Returns the
    names of the modules reset; a ``ValueError`` when ``network`` holds none of the target layers or
    nothing from there on can be reset."""
    import torch

    modules = list(network.named_modules())
    targets = {id(layer) for layer in target_layers}
    start = next((i for i, (_, module) in enumerate(modules) if id(module) in targets), None)
    if start is None:
        raise ValueError(f"none of the target layers is inside {type(network).__name__}")
    resettable = [(name, module) for name, module in modules[start:] if hasattr(module, "reset_parameters")]
    if not resettable:
        raise ValueError(f"no module from the target layer {modules[start][0]!r} on has reset_parameters()")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for _, module in reversed(resettable):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
    return [name for name, _ in resettable]


def similarity(trained: np.ndarray, randomised: np.ndarray) -> dict[str, np.ndarray]:
    """Per image (float64 (B,)) Spearman rank correlation and SSIM of two float32 (B, H, W) map stacks in
    [0, 1]; NaN where either map is constant (no ranks, no structure to compare)."""
    from scipy.stats import rankdata
    from skimage.metrics import structural_similarity

    if trained.shape != randomised.shape:
        raise ValueError(f"maps of shape {trained.shape} and {randomised.shape} cannot be compared")
    count = len(trained)
    out = {name: np.full(count, np.nan) for name in schema.names("sanity")}
    for i in range(count):
        a, b = trained[i].astype(np.float64), randomised[i].astype(np.float64)
        if a.max() == a.min() or b.max() == b.min():
            continue
        ranks_a, ranks_b = rankdata(a.ravel()), rankdata(b.ravel())
        out["sanity_spearman"][i] = float(np.corrcoef(ranks_a, ranks_b)[0, 1])
        side = min(a.shape)
        window = min(7, side if side % 2 else side - 1)
        out["sanity_ssim"][i] = float(structural_similarity(a, b, data_range=1.0, win_size=window))
    return out
