"""Class-activation maps of transformers read through the backbone's declared activation layout.

Every CAM, on timm's ViT (with and without register tokens), DeiT (plain and distilled), Swin, ConvNeXt,
EfficientNet and ResNet and on torchvision's ResNet18, equals pytorch-grad-cam used directly with the
``reshape_transform`` its documentation gives for the architecture (ViT: drop the prefix tokens, reshape
to the patch grid, channels first; Swin: channels first). A backbone that does not declare a layout fails
its cell, naming the layer and what to declare. All models are tiny and randomly initialised.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import ContractViolation
from xaibench.kit.contracts import ActivationLayout
from xaibench.kit.models import ensemble_model
from xaibench.kit.registry import Registry

CAMS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM",
        "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}
TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def _vit_transform(prefix, grid):
    """pytorch-grad-cam's documented ViT ``reshape_transform``: drop the prefix tokens (class, and here
    also distillation or register tokens), reshape the patches to the grid, channels first."""
    def transform(tensor):
        patches = tensor[:, prefix:, :].reshape(tensor.size(0), *grid, tensor.size(2))
        return patches.transpose(2, 3).transpose(1, 2)

    return transform


def _swin_transform(grid):
    """pytorch-grad-cam's documented Swin ``reshape_transform`` (tokens (B, h * w, C) to (B, C, h, w)), on
    timm's channels-last stage output (B, h, w, C) with its rows and columns flattened into tokens."""
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    return lambda tensor: swinT_reshape_transform(tensor.flatten(1, 2), *grid)


# name: (backbone, its parameters, image size, the layer pytorch-grad-cam's docs hook, its reshape_transform)
PEERS = {
    "vit": ("timm", {"name": "vit_tiny_patch16_224", "model_args": TINY_VIT}, 32,
            lambda net: net.blocks[-1].norm1, _vit_transform(1, (4, 4))),
    "vit-registers": ("timm", {"name": "vit_small_patch14_reg4_dinov2", "model_args": TINY_VIT}, 32,
                      lambda net: net.blocks[-1].norm1, _vit_transform(5, (4, 4))),
    "deit": ("timm", {"name": "deit_tiny_patch16_224", "model_args": TINY_VIT}, 32,
             lambda net: net.blocks[-1].norm1, _vit_transform(1, (4, 4))),
    "deit-distilled": ("timm", {"name": "deit_tiny_distilled_patch16_224", "model_args": TINY_VIT}, 32,
                       lambda net: net.blocks[-1].norm1, _vit_transform(2, (4, 4))),
    "swin": ("timm", {"name": "swin_tiny_patch4_window7_224", "model_args": {
                 "img_size": 32, "patch_size": 4, "window_size": 4, "depths": [1, 1], "num_heads": [1, 2],
                 "embed_dim": 16}}, 32, lambda net: net.layers[-1], _swin_transform((4, 4))),
    "convnext": ("timm", {"name": "convnext_atto", "model_args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 16]}}, 64,
                 lambda net: net.stages[-1], None),
    "efficientnet": ("timm", {"name": "test_efficientnet"}, 64, lambda net: net.blocks[-1], None),
    "timm-resnet": ("timm", {"name": "test_resnet"}, 64, lambda net: net.layer4, None),
    # layer2 (4×4 at 32 pixels, 128 channels) keeps Score-CAM's one forward pass per channel affordable
    "torchvision-resnet18": ("resnet18", {"target_layer": "layer2"}, 32, lambda net: net.layer2, None),
}


@pytest.fixture(scope="module")
def built():
    """Each peer's backbone and a model it built under a fixed seed, in eval mode."""
    registry, models = Registry(), {}
    with torch.random.fork_rng(devices=[]):
        for name, (kind, params, size, _, _) in PEERS.items():
            backbone = registry.create("backbones", kind, **params)
            torch.manual_seed(0)
            models[name] = backbone, backbone.build(3, pretrained=False).eval()
    return registry, models


def _batch(size, n=2, seed=0):
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return images, torch.tensor([0, 2, 1][:n])


def _ours(registry, name, backbone, model, images, targets):
    return registry.create("explainers", name).explain(
        model, images, targets, target_layers=backbone.target_layers(model),
        layouts=lambda layer: backbone.activation_layout(model, layer))


@pytest.mark.parametrize("cam", sorted(CAMS))
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_every_cam_equals_pytorch_grad_cam_with_its_documented_reshape_transform(built, peer, cam):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    registry, models = built
    backbone, model = models[peer]
    _, _, size, documented_layer, transform = PEERS[peer]
    images, targets = _batch(size, n=1 if cam == "scorecam" else 2)  # Score-CAM: a forward pass per channel
    assert backbone.target_layers(model) == [documented_layer(model.net)]  # the default is the documented one
    ours = _ours(registry, cam, backbone, model, images, targets)
    with getattr(pytorch_grad_cam, CAMS[cam])(model=model, target_layers=[documented_layer(model.net)],
                                              reshape_transform=transform) as stock_cam:
        stock = stock_cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)
    assert stock.std() > 0.05  # maps with structure, so agreeing means something
    np.testing.assert_allclose(ours, stock, rtol=0, atol=1e-5)


def test_timm_declares_the_layout_it_records(built):
    _, models = built
    expected = {"vit": ActivationLayout.tokens(1, (4, 4)), "vit-registers": ActivationLayout.tokens(5, (4, 4)),
                "deit-distilled": ActivationLayout.tokens(2, (4, 4)), "swin": ActivationLayout.channels_last(),
                "convnext": ActivationLayout.channels_first(), "torchvision-resnet18": ActivationLayout.channels_first()}
    for peer, layout in expected.items():
        backbone, model = models[peer]
        assert backbone.activation_layout(model, PEERS[peer][3](model.net)) == layout, peer
    # inside a ConvNeXt block activations are channels-last between channels-first stages: timm does not
    # record it, so nothing is declared (and a CAM there fails) rather than a guess
    backbone, model = models["convnext"]
    assert backbone.activation_layout(model, model.net.stages[-1].blocks[0].norm) is None
    assert backbone.activation_layout(model, model.net.head) is None


@pytest.mark.parametrize("cam", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_an_ensemble_of_a_transformer_and_a_cnn_reads_each_member_in_its_own_layout(built, cam):
    """With the rule giving one member's logits (the other's times zero), the ensemble's map is that
    member's own: the ViT's tokens and the CNN's channels are each read as their backbone declares. Both
    layers give 4×4 maps (a CAM of layers of different sizes upsamples each before their sum)."""
    registry, models = built
    (vit_backbone, vit), (cnn_backbone, cnn) = models["vit"], models["timm-resnet"]
    images, targets = _batch(32)
    cnn_backbone = Registry().create("backbones", "timm", name="test_resnet", target_layer="layer2")
    owner = {**{id(m): (vit_backbone, vit) for m in vit.modules()}, **{id(m): (cnn_backbone, cnn) for m in cnn.modules()}}

    def layouts(layer):
        backbone, member = owner[id(layer)]
        return backbone.activation_layout(member, layer)

    layers = vit_backbone.target_layers(vit) + cnn_backbone.target_layers(cnn)
    explainer = registry.create("explainers", cam)
    for rule, alone in ((lambda r, m: r + 0 * m, (vit_backbone, vit)), (lambda r, m: 0 * r + m, (cnn_backbone, cnn))):
        mixed = explainer.explain(ensemble_model(vit, cnn, rule).eval(), images, targets, target_layers=layers,
                                  layouts=layouts)
        single = _ours(registry, cam, *alone, images, targets)
        assert single.std() > 0.05
        np.testing.assert_allclose(mixed, single, rtol=0, atol=1e-5)


def test_an_activation_that_does_not_fit_its_declared_layout_is_refused_naming_the_layer(built):
    registry, models = built
    backbone, model = models["vit"]
    images, targets = _batch(32)
    layers = backbone.target_layers(model)
    for name in ("gradcam", "hirescam"):
        explainer = registry.create("explainers", name)
        with pytest.raises(ContractViolation, match=r"layer 'net.blocks.1.norm1' gave an activation of shape "
                                                    r"\(2, 17, 32\), which is not its layout tokens "
                                                    r"\(1 prefix \+ 5×5 patches"):
            explainer.explain(model, images, targets, target_layers=layers,
                              layouts=lambda layer: ActivationLayout.tokens(1, (5, 5)))
        # called without layouts (outside a run) a layer is taken as channels-first: tokens are refused
        with pytest.raises(ContractViolation, match=r"\(2, 17, 32\), which is not its layout channels_first"):
            explainer.explain(model, images, targets, target_layers=layers)


@pytest.mark.parametrize("bad", [dict(kind="rows"), dict(kind="tokens", prefix_tokens=1),
                                 dict(kind="tokens", prefix_tokens=-1, grid=(4, 4)),
                                 dict(kind="channels_last", grid=(4, 4))])
def test_a_layout_that_says_nothing_coherent_cannot_be_built(bad):
    with pytest.raises(ValueError):
        ActivationLayout(**bad)


# -- through the run command -------------------------------------------------------------------------------


class _Tokens(torch.nn.Module):
    """Patches of 8 pixels as tokens (B, 1 + 16, 8) with a class token, as a vision transformer gives."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, 8))
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, images):
        tokens = self.embed(images).flatten(2).transpose(1, 2)
        return self.mix(torch.cat([self.cls.expand(len(images), -1, -1), tokens], dim=1))


class TinyTokens:
    """A third-party token model that says nothing about its layout."""

    def build(self, num_classes, *, pretrained=True):
        tokens = _Tokens()

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.tokens, self.head = tokens, torch.nn.Linear(8, num_classes)

            def forward(self, images):
                return self.head(self.tokens(images).mean(dim=1))

        return Net()

    def target_layers(self, model):
        return [model.tokens.mix]


class TinyCnn:
    """A third-party CNN that says nothing about its layout (4-D, but undeclared all the same)."""

    def build(self, num_classes, *, pretrained=True):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(8, num_classes))

    def target_layers(self, model):
        return [model[1]]


class MisdeclaredTokens(TinyTokens):
    """Declares channels-first for its token output."""

    def activation_layout(self, model, layer):
        return ActivationLayout.channels_first()


class DeclaredTokens(TinyTokens):
    def activation_layout(self, model, layer):
        return ActivationLayout.tokens(1, (4, 4)) if layer is model.tokens.mix else None


class Backbones:
    @hookimpl
    def register_backbones(self, register):
        register("tiny-tokens", TinyTokens)
        register("tiny-cnn", TinyCnn)
        register("misdeclared-tokens", MisdeclaredTokens)
        register("declared-tokens", DeclaredTokens)


GRID = """\
name: layouts
seeds: [0]
datasets: [{DATASET}]
backbones: [{BACKBONES}]
explainers: [{EXPLAINERS}]
train: {{epochs: 1, batch_size: 8}}
protocol: {{faithfulness_steps: 0}}
"""


@pytest.mark.parametrize("peer", ["vit-registers", "swin"])
def test_the_backbone_check_reads_timm_transformers_through_their_layouts(peer):
    from xaibench.kit import testing

    kind, params, size, _, _ = PEERS[peer]
    testing.check_backbone(Registry().create("backbones", kind, **params), num_classes=3, image_size=size)


@pytest.mark.parametrize("backbone, message", [
    (TinyCnn(), "declares no activation layout for layer '1'"),
    (MisdeclaredTokens(), "layer 'tokens.mix' gave an activation of shape (2, 17, 8), which is not its layout "
                          "channels_first"),
])
def test_the_backbone_check_refuses_an_undeclared_or_misdeclared_layout(backbone, message):
    from xaibench.kit import testing

    with pytest.raises(AssertionError, match=re.escape(message)):
        testing.check_backbone(backbone, image_size=32)


def _run(write_grid, tmp_path, capsys, **fields):
    out = tmp_path / "run"
    code = main(["run", "--grid", str(write_grid(GRID.format(**fields))), "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    return code, out, pd.read_csv(out / "leaderboard.csv", keep_default_na=False)


def test_a_backbone_that_declares_no_layout_fails_its_cam_cells_naming_the_layer(registry, blobs, add_plugin,
                                                                               write_grid, tmp_path, capsys):
    add_plugin(Backbones(), name="layout-plugin")
    code, out, table = _run(write_grid, tmp_path, capsys, DATASET="{name: blobs, n: 8}",
                            BACKBONES="tiny-tokens, tiny-cnn, misdeclared-tokens, declared-tokens",
                            EXPLAINERS="gradcam, hirescam, random")
    assert code == 1
    status = {(b, e): (s, err) for b, e, s, err in zip(table["backbone"], table["explainer"], table["status"],
                                                       table["error"])}
    for backbone, layer in (("tiny-tokens", "tokens.mix"), ("tiny-cnn", "1")):
        for explainer in ("gradcam", "hirescam"):
            state, error = status[(backbone, explainer)]
            assert state == "failed" and f"backbone '{backbone}' (plugin 'layout-plugin'" in error
            assert f"declares no activation layout for layer {layer!r}" in error
            assert "activation_layout(model, layer)" in error and ".tokens(prefix_tokens, grid)" in error
    for explainer in ("gradcam", "hirescam"):
        state, error = status[("misdeclared-tokens", explainer)]
        assert state == "failed" and "layer 'tokens.mix' gave an activation of shape (4, 17, 8), which is not its " \
                                     "layout channels_first ((B, C, h, w)) as declared by backbone " \
                                     "'misdeclared-tokens' (plugin 'layout-plugin'" in error  # 4 of 8 images have masks
        assert status[("declared-tokens", explainer)][0] == "done"
    assert all(status[(b, "random")][0] == "done" for b in ("tiny-tokens", "tiny-cnn", "misdeclared-tokens"))


def test_a_tiny_vit_runs_end_to_end_with_gradcam_and_its_maps_are_pytorch_grad_cams(registry, write_grid, tmp_path,
                                                                                   capsys):
    """``xaibench run`` with a timm ViT on the synthetic dataset: the cell completes, and its stored maps
    are pytorch-grad-cam's Grad-CAM (last block's norm1, documented reshape_transform) of the trained model."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xaibench.kit.models import load_weights
    from xaibench.pipeline.training import to_tensor

    dataset = {"n_train": 16, "n_val": 0, "n_test": 8, "image_size": 32}
    code, out, table = _run(
        write_grid, tmp_path, capsys, DATASET="{name: synthetic, " + ", ".join(f"{k}: {v}" for k, v in dataset.items())
        + "}", BACKBONES="{name: timm, params: {name: vit_tiny_patch16_224}, model_args: {img_size: 32, patch_size: 8, "
                         "depth: 2, embed_dim: 32, num_heads: 2}}", EXPLAINERS="gradcam")
    assert code == 0 and list(table["status"]) == ["done"]
    assert 0 <= float(table["jaccard"].iloc[0]) <= 1
    (folder,) = [f for f in (out / "cache" / "explain").glob("*/") if len(np.load(f / "index.npy"))]  # the test split
    maps, index = np.load(folder / "maps.npy"), np.load(folder / "index.npy")
    assert maps.shape == (len(index), 32, 32) and len(index) >= 2 and maps.dtype == np.float32
    assert (maps.std(axis=(1, 2)) > 0.05).all()  # each map has structure: not constant

    backbone = registry.create("backbones", "timm", name="vit_tiny_patch16_224", model_args=TINY_VIT)
    (weights,) = (out / "cache" / "models").glob("*.safetensors")
    model = load_weights(backbone.build(2, pretrained=False), weights).eval()
    samples = registry.create("datasets", "synthetic", **dataset).split("test")
    images = to_tensor(np.stack([samples[i].image for i in index]))
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.net.blocks[-1].norm1],
                                  reshape_transform=_vit_transform(1, (4, 4))) as cam:
        stock = cam(input_tensor=images, targets=[ClassifierOutputTarget(samples[i].label) for i in index])
    np.testing.assert_allclose(maps, stock, rtol=0, atol=1e-5)
