"""CUDA against the CPU, on a machine with a CUDA device (skipped elsewhere; benchmarks/gpu.py runs them
where one is lent): the same logits and CAM maps within float tolerance, and no host synchronisation per
batch in training and prediction."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xaibench.kit.registry import get_registry
from xaibench.pipeline.grid import TrainConfig
from xaibench.pipeline.training import fit, predict_logits

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def trained_resnet():
    backbone = get_registry().create("backbones", "resnet18", target_layer="layer3")
    torch.manual_seed(0)
    model = backbone.build(2, pretrained=False)
    fit(model, images(32), np.arange(32) % 2, TrainConfig(epochs=1, batch_size=8), seed=0, device="cpu")
    return backbone, model.eval()


def test_logits_and_gradcam_maps_on_cuda_match_the_cpus():
    backbone, model = trained_resnet()
    data = images(16)
    on_cpu = predict_logits(model, data, batch_size=8, device="cpu")
    on_cuda = predict_logits(model, data, batch_size=8, device="cuda")
    np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-3, atol=1e-4)
    explainer = get_registry().create("explainers", "gradcam")
    x = torch.from_numpy(data).permute(0, 3, 1, 2).float() / 255
    targets = torch.from_numpy(on_cpu.argmax(1))
    maps = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        maps[device] = np.asarray(explainer.explain(model, x.to(device), targets.to(device),
                                                    target_layers=backbone.target_layers(model)))
    np.testing.assert_allclose(maps["cuda"], maps["cpu"], atol=1e-3)


def _syncs(fn) -> int:
    """How many times ``fn`` makes the host wait for the device (torch's sync debug mode, as warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message).lower() for warning in caught)


def test_training_and_prediction_do_not_wait_for_the_device_per_batch():
    backbone = get_registry().create("backbones", "resnet18")

    def train(n):
        model = backbone.build(2, pretrained=False).to("cuda")
        return lambda: fit(model, images(n), np.arange(n) % 2, TrainConfig(epochs=2, batch_size=4), seed=0,
                           device="cuda")

    assert _syncs(train(8)) == _syncs(train(32))  # 2 and 8 batches per epoch: the same waits
    model = backbone.build(2, pretrained=False).to("cuda")
    assert _syncs(lambda: predict_logits(model, images(8), batch_size=4, device="cuda")) == \
        _syncs(lambda: predict_logits(model, images(32), batch_size=4, device="cuda"))
