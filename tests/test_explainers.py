"""Every registered explainer's contract, Grad-CAM's agreement with pytorch-grad-cam, and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xaibench.errors import UserError
from xaibench.kit.models import ensemble_model
from xaibench.kit.registry import Registry
from xaibench.pipeline import metrics

# attention-rollout explains token models only (it refuses a ResNet): tests/test_attention_rollout.py
EXPLAINERS = [name for name in Registry().names("explainers") if name != "attention-rollout"]
# Score-CAM runs one forward pass per activation channel; layer3 has half of layer4's 512.
CONTRACT_PARAMS = {"scorecam": {"target_layer": "layer3"}}


@pytest.fixture(scope="module")
def registry():
    return Registry()


@pytest.fixture(scope="module")
def resnet(registry):
    """A randomly initialised resnet18 (fixed seed, global RNG untouched) and its backbone."""
    backbone = registry.create("backbones", "resnet18")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = backbone.build(2).eval()
    return backbone, model


def tiny_batch(size=(48, 40), n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, *size, generator=generator)
    masks = np.zeros((n, *size), dtype=bool)
    masks[:, 10:30, 5:25] = True
    masks[-1, :, :] = False
    masks[-1, 2:12, 20:35] = True
    return images, torch.arange(n) % 2, masks


def explain(explainer, model, backbone, images, targets, masks):
    gt = masks if getattr(explainer, "uses_ground_truth", False) else None
    return explainer.explain(model, images, targets, target_layers=backbone.target_layers(model), masks=gt)


@pytest.mark.parametrize("name", EXPLAINERS)
def test_every_explainer_keeps_the_contract(registry, resnet, name):
    backbone, model = resnet
    images, targets, masks = tiny_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images_before, masks_before = images.clone(), masks.copy()
    explainer = registry.create("explainers", name, **CONTRACT_PARAMS.get(name, {}))
    maps = explain(explainer, model, backbone, images, targets, masks)
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == (2, 48, 40)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_array_equal(explain(explainer, model, backbone, images, targets, masks), maps)
    # Nothing given is changed, and no parameter gradient is left behind.
    assert torch.equal(images, images_before) and np.array_equal(masks, masks_before)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


def test_gradcam_matches_pytorch_grad_cam_on_a_single_model(resnet):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone, model = resnet
    images, targets, _ = tiny_batch(size=(96, 64), n=3, seed=1)
    layers = backbone.target_layers(model)
    ours = Registry().create("explainers", "gradcam").explain(model, images, targets, target_layers=layers)
    with GradCAM(model=model, target_layers=layers) as cam:
        stock = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    assert stock.std() > 0.1  # non-trivial maps, so agreement means something
    # Both end min-max scaled; the library resizes with cv2, this with torch (both half-pixel bilinear).
    np.testing.assert_allclose(ours, metrics.normalise(stock), atol=1e-3)


def test_gradcam_takes_no_parameter_gradients(resnet, monkeypatch):
    backbone, model = resnet
    images, targets, _ = tiny_batch()
    calls = []
    original = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        calls.append([tuple(t.shape) for t in inputs])
        return original(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    Registry().create("explainers", "gradcam").explain(
        model, images, targets, target_layers=backbone.target_layers(model))
    assert calls == [[(2, 512, 2, 2)]]  # the layer4 activations only
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_works_on_a_frozen_model(registry):
    backbone = registry.create("backbones", "resnet18")
    torch.manual_seed(0)
    model = backbone.build(2).eval().requires_grad_(False)
    images, targets, _ = tiny_batch()
    maps = registry.create("explainers", "gradcam").explain(
        model, images, targets, target_layers=backbone.target_layers(model))
    assert maps.max() == pytest.approx(1.0)
    assert not any(p.requires_grad for p in model.parameters())


def test_target_layer_is_a_path_in_the_backbone_network(registry, resnet):
    backbone, model = resnet
    images, targets, _ = tiny_batch(size=(64, 64))
    default_layers = backbone.target_layers(model)
    on_layer3 = registry.create("explainers", "gradcam", target_layer="layer3")
    by_path = on_layer3.explain(model, images, targets, target_layers=default_layers)
    by_list = registry.create("explainers", "gradcam").explain(
        model, images, targets, target_layers=[model.net.layer3])
    np.testing.assert_array_equal(by_path, by_list)
    default = registry.create("explainers", "gradcam").explain(model, images, targets, target_layers=default_layers)
    assert not np.allclose(by_path, default, atol=1e-2)
    hires = registry.create("explainers", "hirescam", target_layer="layer3")
    np.testing.assert_array_equal(
        hires.explain(model, images, targets, target_layers=default_layers),
        registry.create("explainers", "hirescam").explain(model, images, targets, target_layers=[model.net.layer3]),
    )
    with pytest.raises(UserError, match="layer9"):
        registry.create("explainers", "gradcam", target_layer="layer9").explain(
            model, images, targets, target_layers=default_layers)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_gradient_cams_of_an_ensemble_follow_the_mixing_weight(registry, name):
    """At alpha = 1 the masked member gets no gradient, so the ensemble's map is the raw model's; a
    target_layer path is resolved in both members."""
    from xaibench_plugins.ensembles import LogitMix

    backbone = registry.create("backbones", "resnet18")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        raw, masked = backbone.build(2).eval(), backbone.build(2).eval()
    images, targets, _ = tiny_batch(size=(64, 64))
    explainer = registry.create("explainers", name, target_layer="layer3")
    alone = explainer.explain(raw, images, targets, target_layers=backbone.target_layers(raw))
    full = explainer.explain(ensemble_model(raw, masked, LogitMix(alpha=1.0)).eval(), images, targets,
                             target_layers=backbone.target_layers(raw) + backbone.target_layers(masked))
    half = explainer.explain(ensemble_model(raw, masked, LogitMix(alpha=0.5)).eval(), images, targets,
                             target_layers=backbone.target_layers(raw) + backbone.target_layers(masked))
    np.testing.assert_allclose(full, alone, atol=1e-4)
    assert not np.allclose(half, alone, atol=1e-2)


def test_oracle_returns_the_mask_and_scores_a_perfect_jaccard(registry, resnet):
    backbone, model = resnet
    images, targets, masks = tiny_batch()
    oracle = registry.create("explainers", "oracle")
    assert oracle.uses_ground_truth is True
    maps = explain(oracle, model, backbone, images, targets, masks)
    np.testing.assert_array_equal(maps, masks.astype(np.float32))
    for threshold in (0.1, 0.5, 1.0):
        assert metrics.iou(metrics.binarise(maps, threshold), masks).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="ground-truth"):
        oracle.explain(model, images, targets, target_layers=[], masks=None)


def test_random_maps_depend_on_seed_and_image_not_on_batching(registry, resnet):
    backbone, model = resnet
    images, targets, masks = tiny_batch(n=3)
    random = registry.create("explainers", "random", seed=3)
    together = explain(random, model, backbone, images, targets, masks)
    apart = np.concatenate([explain(random, model, backbone, images[i : i + 1], targets[i : i + 1], masks)
                            for i in (0, 1, 2)])
    np.testing.assert_array_equal(together, apart)
    other_seed = explain(registry.create("explainers", "random", seed=4), model, backbone, images, targets, masks)
    assert not np.allclose(together, other_seed)
    assert not np.allclose(together[0], together[1])
    assert abs(together.mean() - 0.5) < 0.05


def test_centre_prior_peaks_in_the_middle_with_sigma_a_fraction_of_the_image(registry, resnet):
    backbone, model = resnet
    images = torch.zeros(2, 3, 41, 61)
    maps = registry.create("explainers", "centre", sigma=0.25).explain(
        model, images, torch.tensor([0, 1]), target_layers=[])
    assert maps.shape == (2, 41, 61) and np.array_equal(maps[0], maps[1])
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (20, 30)
    assert maps[0].max() == 1.0 and maps[0].min() == 0.0
    # Isotropic in pixels: s = 0.25 * 41, the same fall-off along rows and columns.
    assert maps[0, 20 + 10, 30] == pytest.approx(maps[0, 20, 30 + 10], abs=1e-6)
    raw = np.exp(-np.array([0.0, 10.0, 30.0]) ** 2 / (2 * (0.25 * 41) ** 2))
    low = np.exp(-(20.0**2 + 30.0**2) / (2 * (0.25 * 41) ** 2))
    assert maps[0, 20, 30 + 10] == pytest.approx((raw[1] - low) / (1 - low), abs=1e-6)


LIBRARY_CAMS = {"gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM",
                "scorecam": "ScoreCAM", "eigencam": "EigenCAM"}


@pytest.fixture(scope="module")
def resnets(registry):
    """An untrained and a (briefly) trained resnet18, both built under a fixed seed."""
    from tests.conftest import BlobDataset
    from xaibench.pipeline.grid import TrainConfig
    from xaibench.pipeline.training import fit

    backbone = registry.create("backbones", "resnet18")
    samples = BlobDataset(size=32, n=16).split("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = backbone.build(2).eval()
        torch.manual_seed(0)
        trained = backbone.build(2)
        fit(trained, np.stack([s.image for s in samples]), np.array([s.label for s in samples]),
            TrainConfig(epochs=3, batch_size=8, lr=1e-3, augment=False), seed=0, device="cpu")
    return backbone, {"untrained": untrained, "trained": trained.eval()}


@pytest.mark.parametrize("state", ["untrained", "trained"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("name", sorted(LIBRARY_CAMS))
def test_every_wrapped_cam_equals_pytorch_grad_cam_on_a_single_model(registry, resnets, name, layer, state):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, models = resnets
    model = models[state]
    images, targets, _ = tiny_batch(size=(48, 40), n=2, seed=2)
    layers = [getattr(model.net, layer)]
    ours = registry.create("explainers", name, target_layer=layer).explain(model, images, targets,
                                                                          target_layers=layers)
    with getattr(pytorch_grad_cam, LIBRARY_CAMS[name])(model=model, target_layers=layers) as cam:
        stock = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    assert stock.std() > 0.05  # non-trivial maps, so agreement means something
    np.testing.assert_allclose(ours, stock, rtol=0, atol=1e-5)
