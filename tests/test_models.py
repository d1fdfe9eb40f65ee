import numpy as np
import pytest
import torch

from xaibench.errors import UserError
from xaibench.kit.models import ensemble_model


def test_logit_mix_is_the_papers_formula(registry):
    raw = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    masked = torch.tensor([[-4.0, 3.0], [1.0, -1.0]])
    mix = registry.create("ensembles", "logit-mix", alpha=0.75)
    assert torch.allclose(mix(raw, masked), torch.tensor([[0.5, 0.0], [0.625, 0.125]]))
    assert registry.create("ensembles", "logit-mix", alpha=1.0).reduces_to() == "raw"
    assert registry.create("ensembles", "logit-mix", alpha=0.0).reduces_to() == "masked"
    assert mix.reduces_to() is None


def test_logit_mix_can_flip_a_decision():
    from xaibench_plugins.ensembles import LogitMix

    raw = torch.tensor([[1.0, 0.0]])
    masked = torch.tensor([[0.0, 3.0]])
    assert LogitMix(alpha=0.9)(raw, masked).argmax().item() == 0
    assert LogitMix(alpha=0.5)(raw, masked).argmax().item() == 1


@pytest.mark.parametrize("params", [{"name": "resnet18"}, {"name": "timm", "params": {"name": "resnet10t"}}])
def test_backbones_map_unit_images_to_logits(registry, params):
    backbone = registry.create("backbones", params["name"], **params.get("params", {}))
    model = backbone.build(3).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 3)
    (layer,) = backbone.target_layers(model)
    assert isinstance(layer, torch.nn.Module)


def test_resnet18_loads_a_state_dict_file_and_refuses_pickled_code(registry, tmp_path):
    from safetensors.torch import save_file

    source = registry.create("backbones", "resnet18").build(2)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(path))
    loaded = registry.create("backbones", "resnet18", weights=str(path)).build(2)
    assert torch.equal(loaded.net.conv1.weight, source.net.conv1.weight)
    assert torch.equal(loaded.net.fc.weight, source.net.fc.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, str(evil))
    with pytest.raises(UserError, match="never unpickles code"):
        registry.create("backbones", "resnet18", weights=str(evil)).build(2)


def test_imagenet_weights_offline_say_how_to_get_them(registry, monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError) as err:
        registry.create("backbones", "resnet18", weights="imagenet").build(2)
    message = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in message and "weights: none" in message


def test_gradcam_maps_are_unit_range_at_image_size(registry):
    torch.manual_seed(0)
    backbone = registry.create("backbones", "resnet18")
    model = backbone.build(2).eval()
    maps = registry.create("explainers", "gradcam").explain(
        model, torch.rand(3, 3, 64, 48), torch.tensor([0, 1, 1]), target_layers=backbone.target_layers(model))
    assert maps.shape == (3, 64, 48) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.5


def test_ensemble_explanation_follows_the_mixing_weight(registry):
    """At alpha = 1 the masked member gets no gradient, so the ensemble's Grad-CAM is the raw model's."""
    from xaibench_plugins.ensembles import LogitMix

    torch.manual_seed(0)
    backbone = registry.create("backbones", "resnet18")
    raw, masked = backbone.build(2).eval(), backbone.build(2).eval()
    images, targets = torch.rand(2, 3, 64, 64), torch.tensor([1, 0])
    gradcam = registry.create("explainers", "gradcam")
    alone = gradcam.explain(raw, images, targets, target_layers=backbone.target_layers(raw))
    layers = backbone.target_layers(raw) + backbone.target_layers(masked)
    full = gradcam.explain(ensemble_model(raw, masked, LogitMix(alpha=1.0)), images, targets, target_layers=layers)
    half = gradcam.explain(ensemble_model(raw, masked, LogitMix(alpha=0.5)), images, targets, target_layers=layers)
    assert np.allclose(full, alone, atol=1e-4)
    assert not np.allclose(half, alone, atol=1e-2)
