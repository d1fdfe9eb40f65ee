"""Backbones built for a dataset's bands (``build(num_classes, bands=...)``): RGB datasets get today's module
unchanged; other bands get the RGB network with its first convolution widened, each composite band taking
the weights' channel of its composite position (red, green, blue), every other band the mean of the three
RGB channels, and a normalisation of the weights' RGB constants on the composite, the dataset's own
statistics elsewhere.

Every model is tiny and randomly initialised, or loads a weights file the test writes itself (torchvision's
ResNet18 layout; TorchGeo's file at the path TorchGeo reads, as in test_torchgeo_weights)."""

from pathlib import Path

import pytest
import torch

from xaibench.errors import UserError
from xaibench.kit.contracts import Bands
from xaibench_plugins.backbones import IMAGENET_MEAN, IMAGENET_STD

RGBN = Bands(("red", "green", "blue", "nir"), (0, 1, 2), mean=(0.3, 0.3, 0.3, 0.6), std=(0.1, 0.1, 0.1, 0.2))
NRGB = Bands(("nir", "red", "green", "blue"), (1, 2, 3), mean=(0.7, 0.2, 0.2, 0.2), std=(0.15, 0.1, 0.1, 0.1))
BGR = Bands(("blue", "green", "red"), (2, 1, 0))
PAN = Bands(("pan",), (0, 0, 0))
# per band, the RGB channel of the weights its input channel takes, "mean" (the mean of the three: a band
# outside the composite) or "sum" (their sum: a grey band, shown as red, green and blue at once)
SOURCES = {"rgbn": (RGBN, (0, 1, 2, "mean")), "nrgb": (NRGB, ("mean", 0, 1, 2)), "bgr": (BGR, (2, 1, 0)),
           "pan": (PAN, ("sum",))}
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}
# name: (timm parameters, the first convolution timm records, the RGB normalisation of its pretrained_cfg)
TIMM = {
    "resnet": ({"name": "test_resnet"}, "conv1.0", ((0.5,) * 3, (0.5,) * 3)),
    "convnext": ({"name": "convnext_atto", "model_args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}}, "stem.0",
                 (IMAGENET_MEAN, IMAGENET_STD)),
    "vit": ({"name": "vit_tiny_patch16_224", "model_args": TINY_VIT}, "patch_embed.proj", ((0.5,) * 3, (0.5,) * 3)),
    "swin": ({"name": "swin_tiny_patch4_window7_224", "model_args": {
        "img_size": 32, "patch_size": 4, "window_size": 4, "depths": [1, 1], "num_heads": [1, 2], "embed_dim": 16}},
        "patch_embed.proj", (IMAGENET_MEAN, IMAGENET_STD)),
}


def seeded(build, **kwargs):
    torch.manual_seed(0)
    return build(2, **kwargs)


def expected_weight(rgb_weight, sources):
    """The widened weight (out, C, kh, kw) the documented rule gives from the RGB weight (out, 3, kh, kw)."""
    pick = {"mean": lambda: rgb_weight.mean(dim=1), "sum": lambda: rgb_weight.sum(dim=1)}
    return torch.stack([pick[s]() if s in pick else rgb_weight[:, s] for s in sources], dim=1)


def expected_normalisation(bands, sources, rgb_mean, rgb_std):
    """Per band: the weights' RGB constant of its channel, the mean of the three for a grey band, the
    dataset's own statistic for a band outside the composite."""
    mean, std = [], []
    for band, source in enumerate(sources):
        if band in bands.others:
            mean.append(bands.mean[band])
            std.append(bands.std[band])
        elif source == "sum":  # shown as red, green and blue at once
            mean.append(sum(rgb_mean) / 3)
            std.append(sum(rgb_std) / 3)
        else:
            mean.append(rgb_mean[source])
            std.append(rgb_std[source])
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


def assert_widened(rgb_model, model, first_convs, bands, sources, rgb_norm):
    """``model`` is ``rgb_model`` (same seed or file) with its ``first_convs`` widened and normalised per band."""
    rgb_state, state = rgb_model.state_dict(), model.state_dict()
    weights = [f"net.{first_conv}.weight" for first_conv in first_convs]
    assert state.keys() == rgb_state.keys()
    for weight in weights:
        assert state[weight].shape == (rgb_state[weight].shape[0], bands.count, *rgb_state[weight].shape[2:])
        assert torch.equal(state[weight], expected_weight(rgb_state[weight], sources))
    assert all(torch.equal(state[k], rgb_state[k]) for k in state if k not in (*weights, "mean", "std"))
    mean, std = expected_normalisation(bands, sources, *rgb_norm)
    assert torch.allclose(state["mean"], mean, rtol=0, atol=1e-7) and torch.allclose(state["std"], std, rtol=0,
                                                                                          atol=1e-7)
    for first_conv in first_convs:
        conv, rgb_conv = model.net.get_submodule(first_conv), rgb_model.net.get_submodule(first_conv)
        assert type(conv) is type(rgb_conv) and conv.in_channels == bands.count
        assert conv.weight.dtype == rgb_conv.weight.dtype and conv.weight.requires_grad
        assert (conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is None) == \
            (rgb_conv.stride, rgb_conv.padding, rgb_conv.dilation, rgb_conv.groups, rgb_conv.bias is None)
    with torch.no_grad():
        logits = model.eval()(torch.rand(2, bands.count, 32, 32))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("bands", [None, Bands.rgb3()], ids=["none", "rgb3"])
def test_rgb_datasets_get_todays_resnet18(registry, bands):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(num_classes=2).state_dict()
    model = seeded(registry.create("backbones", "resnet18").build, bands=bands)
    state = model.state_dict()
    assert state.keys() == {f"net.{k}" for k in reference} | {"mean", "std"}
    assert all(torch.equal(state[f"net.{k}"], v) for k, v in reference.items())
    assert torch.equal(state["mean"], torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    assert torch.equal(state["std"], torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))


@pytest.mark.parametrize("case", list(SOURCES))
def test_resnet18_maps_its_rgb_filters_onto_the_bands(registry, case):
    bands, sources = SOURCES[case]
    backbone = registry.create("backbones", "resnet18")
    assert_widened(seeded(backbone.build), seeded(backbone.build, bands=bands), ["conv1"], bands, sources,
                   (IMAGENET_MEAN, IMAGENET_STD))


def test_a_weights_file_loads_into_a_multiband_resnet18_by_the_documented_mapping(registry, tmp_path):
    from torchvision.models import resnet18

    state = resnet18().state_dict()  # 1000 classes: the head is left out for a 2-class task
    out, _, kh, kw = state["conv1.weight"].shape
    # recognisable filters: channel k of output o is 100 (k + 1) + o, plus a little noise
    state["conv1.weight"] = (100.0 * torch.arange(1, 4).view(1, 3, 1, 1) + torch.arange(out).view(out, 1, 1, 1)
                             + 0.01 * torch.rand(out, 3, kh, kw))
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = registry.create("backbones", "resnet18", weights=str(path))
    for case in ("rgbn", "nrgb", "pan"):
        bands, sources = SOURCES[case]
        model = backbone.build(2, bands=bands)
        weight = model.net.conv1.weight
        assert torch.equal(weight, expected_weight(state["conv1.weight"], sources))
        for band, source in enumerate(sources):  # 100, 200, 300 (+ o) at red, green, blue; 200 (+ o) elsewhere;
            if source == "sum":  # 600 (+ 3 o) for a grey band
                level, offsets = 600.0, 3 * torch.arange(out) + 0.015
            else:
                level, offsets = (200.0 if source == "mean" else 100.0 * (source + 1)), torch.arange(out) + 0.005
            assert torch.allclose(weight[:, band].mean(dim=(1, 2)), level + offsets, atol=0.03)
        assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
        # the pipeline builds the bare architecture and loads the trained state dict into it
        bare = backbone.build(2, pretrained=False, bands=bands)
        bare.load_state_dict(model.state_dict())
        assert torch.equal(bare.net.conv1.weight, weight)


@pytest.mark.parametrize("bands", [None, Bands.rgb3()], ids=["none", "rgb3"])
@pytest.mark.parametrize("peer", list(TIMM))
def test_rgb_datasets_get_todays_timm_models(registry, peer, bands):
    import timm

    params, _, (mean, std) = TIMM[peer]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in params.get("model_args", {}).items()}
    torch.manual_seed(0)
    reference = timm.create_model(params["name"], num_classes=2, **args).state_dict()
    state = seeded(registry.create("backbones", "timm", **params).build, bands=bands).state_dict()
    assert state.keys() == {f"net.{k}" for k in reference} | {"mean", "std"}
    assert all(torch.equal(state[f"net.{k}"], v) for k, v in reference.items())
    assert torch.equal(state["mean"], torch.tensor(mean).view(1, 3, 1, 1))
    assert torch.equal(state["std"], torch.tensor(std).view(1, 3, 1, 1))


@pytest.mark.parametrize("case", ["rgbn", "nrgb", "pan"])
@pytest.mark.parametrize("peer", list(TIMM))
def test_timm_models_map_their_rgb_filters_onto_the_bands(registry, peer, case):
    params, first_conv, norm = TIMM[peer]
    bands, sources = SOURCES[case]
    backbone = registry.create("backbones", "timm", **params)
    model = seeded(backbone.build, bands=bands)
    assert_widened(seeded(backbone.build), model, [first_conv], bands, sources, norm)
    bare = backbone.build(2, pretrained=False, bands=bands)
    bare.load_state_dict(model.state_dict())  # same architecture and shapes as the build with weights
    assert torch.equal(bare.net.get_submodule(first_conv).weight, model.net.get_submodule(first_conv).weight)


def test_every_first_convolution_timm_records_is_widened(registry):
    """MobileOne's stem takes the image with two parallel convolutions (timm records both)."""
    backbone = registry.create("backbones", "timm", name="mobileone_s0")
    bands, sources = SOURCES["nrgb"]
    assert_widened(seeded(backbone.build), seeded(backbone.build, bands=bands),
                   ["stem.conv_kxk.0.conv", "stem.conv_scale.conv"], bands, sources, (IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("first_conv, found", [
    (None, "timm records no first convolution for it (pretrained_cfg['first_conv'] is None)"),
    ("stem.9", "its first convolution 'stem.9' is no module"),
    ("stem.1", "its first convolution 'stem.1' is a LayerNorm2d, not a Conv2d taking 3 channels"),
    (["stem.0", "stages.0.blocks.0.conv_dw"], "'stages.0.blocks.0.conv_dw' is a Conv2d taking 8 channels in 8 groups"),
])
def test_a_timm_model_without_a_widenable_first_convolution_is_refused(registry, monkeypatch, first_conv, found):
    from xaibench_plugins.backbones import TimmBackbone

    create = TimmBackbone._create

    def recording(self, num_classes, *, pretrained):
        net = create(self, num_classes, pretrained=pretrained)
        net.pretrained_cfg = {**net.pretrained_cfg, "first_conv": first_conv}
        return net

    monkeypatch.setattr(TimmBackbone, "_create", recording)
    params, _, _ = TIMM["convnext"]
    backbone = registry.create("backbones", "timm", **params)
    with pytest.raises(UserError) as err:
        backbone.build(2, bands=RGBN)
    message = str(err.value)
    assert "timm model 'convnext_atto' cannot take 4 bands (red, green, blue, nir" in message and found in message
    assert backbone.build(2, bands=Bands.rgb3()).net.stem[0].in_channels == 3  # RGB needs no first convolution


def test_bands_outside_the_composite_need_their_statistics(registry):
    backbone = registry.create("backbones", "resnet18")
    with pytest.raises(ValueError, match="have no mean/std"):
        backbone.build(2, bands=Bands(("red", "green", "blue", "nir")))
    assert backbone.build(2, bands=PAN).mean.flatten().tolist() == pytest.approx([sum(IMAGENET_MEAN) / 3])


def test_torchgeo_rgb_weights_map_onto_the_composite_with_their_normalisation(registry, tmp_path, monkeypatch):
    import timm
    import torchgeo.models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = "ResNet18_Weights.SENTINEL2_RGB_MOCO"
    torch.manual_seed(3)
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(torchgeo.models.get_weight(name).url).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    bands, sources = SOURCES["nrgb"]
    for backbone in (registry.create("backbones", "resnet18", weights=f"torchgeo:{name}"),
                     registry.create("backbones", "timm", name="resnet18", weights=f"torchgeo:{name}")):
        model = backbone.build(2, bands=bands)
        assert torch.equal(model.net.conv1.weight, expected_weight(state["conv1.weight"], sources))
        # their reflectance is taken as it is (mean 0, std 1) on the composite; the dataset's statistics elsewhere
        mean, std = expected_normalisation(bands, sources, (0.0,) * 3, (1.0,) * 3)
        assert torch.equal(model.mean, mean) and torch.equal(model.std, std)
    with pytest.raises(UserError, match="take 13 input bands .*uses 3-band \\(RGB\\) weights only.*in_chans 3"):
        registry.create("backbones", "resnet18", weights="torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO").build(
            2, bands=bands)
