"""``attention-rollout`` against a rollout written out by hand from a tiny ViT's qkv weights, its refusal of
backbones without global attention, its ensembles, and a run through the CLI (a ResNet cell fails with
the refusal, a ViT cell gets maps)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import UserError
from xaibench.kit import testing
from xaibench.kit.models import ensemble_model
from xaibench.kit.registry import Registry


def tiny_vit(seed=0, reg_tokens=0, dynamic=False, class_token=True):
    """A randomly initialised timm ViT: depth 2, embed_dim 32, 32-pixel images, 8-pixel patches."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=2,
                                reg_tokens=reg_tokens, dynamic_img_size=dynamic, class_token=class_token,
                                global_pool="token" if class_token else "avg")
        # random class and register tokens (timm starts registers at zero), so prefixes differ from patches
        for p in (net.cls_token, net.reg_token):
            if p is not None:
                p.data.normal_()
        for block in net.blocks:  # peaked attention (a fresh ViT attends almost uniformly)
            block.attn.qkv.weight.data.mul_(4.0)
    return net.eval()


@torch.no_grad()
def hand_rows(net, images, fusion="mean"):
    """The class token's rollout row over the patch grid (B, h, w), by hand from each block's qkv weights
    and its attention input (norm1's output)."""
    inputs = []
    hooks = [block.norm1.register_forward_hook(lambda m, i, o: inputs.append(o.detach())) for block in net.blocks]
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    rollout = None
    for block, x in zip(net.blocks, inputs):
        attn = block.attn
        b, n, d = x.shape
        heads = attn.num_heads
        qkv = x @ attn.qkv.weight.T + attn.qkv.bias
        q, k, _ = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, dim=-1)
        fused = {"mean": weights.mean(1), "max": weights.max(1).values, "min": weights.min(1).values}[fusion]
        fused = 0.5 * fused + 0.5 * torch.eye(n)
        fused = fused / fused.sum(-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    prefix = net.num_prefix_tokens
    grid = (images.shape[-2] // 8, images.shape[-1] // 8)
    return rollout[:, 0, prefix:].reshape(b, *grid)


def scaled(rows, size):
    """Bilinear upsampling to ``size`` and per-image min-max scaling, (B, H, W) numpy."""
    up = F.interpolate(rows[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    return ((up - low) / (up.amax(dim=(1, 2), keepdim=True) - low)).numpy()


def hand_rollout(net, images, fusion="mean"):
    return scaled(hand_rows(net, images, fusion), images.shape[-2:])


def explain(net, images, **params):
    return Registry().create("explainers", "attention-rollout", **params).explain(
        net, images, torch.zeros(len(images), dtype=torch.long), target_layers=[])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_rollout_equals_the_hand_computed_one(fusion, reg_tokens):
    net = tiny_vit(reg_tokens=reg_tokens)
    assert net.num_prefix_tokens == 1 + reg_tokens
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = explain(net, images, head_fusion=fusion)
    expected = hand_rollout(net, images, fusion)
    assert ours.dtype == np.float32 and ours.shape == (3, 32, 32)
    assert expected.std() > 0.1  # a map with structure, so agreement means something
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # the fused attention path is restored afterwards
    assert all(block.attn.fused_attn == type(block.attn)(32, 4).fused_attn for block in net.blocks)


def test_the_head_fusions_differ_and_the_map_follows_the_grid_at_the_images_size():
    net = tiny_vit(dynamic=True)
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2))  # a 4 x 5 patch grid
    maps = {fusion: explain(net, images, head_fusion=fusion) for fusion in ("mean", "max", "min")}
    assert maps["mean"].shape == (2, 32, 40)
    np.testing.assert_allclose(maps["mean"], hand_rollout(net, images), atol=1e-5)
    assert np.abs(maps["mean"] - maps["max"]).max() > 0.01 and np.abs(maps["mean"] - maps["min"]).max() > 0.01


def test_an_unknown_head_fusion_is_refused():
    with pytest.raises(Exception, match="head_fusion"):
        Registry().create("explainers", "attention-rollout", head_fusion="median")


def test_a_backbone_without_attention_is_refused_by_name():
    resnet = Registry().create("backbones", "resnet18").build(2)
    with pytest.raises(UserError, match=r"backbone network \(ResNet\) has no attention blocks.*transformer"):
        explain(resnet.eval(), torch.rand(1, 3, 32, 32))
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 1),
                           num_classes=2).eval()  # windowed attention: no global token sequence to roll out
    with pytest.raises(UserError, match=r"\(SwinTransformer\) has attention modules but no class/patch token layout"):
        explain(swin, torch.rand(1, 3, 32, 32))


def test_ensembles_mix_the_members_rollouts_by_their_share_of_the_mixed_logit():
    raw, masked = tiny_vit(seed=0), tiny_vit(seed=1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def mixed(alpha):
        return ensemble_model(raw, masked, lambda r, m: alpha * r + (1 - alpha) * m).eval()

    np.testing.assert_allclose(explain(mixed(1.0), images), explain(raw, images), atol=1e-6)
    np.testing.assert_allclose(explain(mixed(0.0), images), explain(masked, images), atol=1e-6)
    # α = 0.3: 0.3 of the raw member's rollout plus 0.7 of the masked one's, then scaled
    expected = scaled(0.3 * hand_rows(raw, images) + 0.7 * hand_rows(masked, images), images.shape[-2:])
    ours = explain(mixed(0.3), images)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert np.abs(ours - explain(raw, images)).max() > 0.01 and np.abs(ours - explain(masked, images)).max() > 0.01
    assert all(p.grad is None for p in [*raw.parameters(), *masked.parameters()])


def test_an_ensemble_with_a_cnn_member_is_refused_naming_the_member():
    cnn = Registry().create("backbones", "resnet18").build(2).eval()
    model = ensemble_model(tiny_vit(), cnn, lambda r, m: 0.5 * r + 0.5 * m).eval()
    with pytest.raises(UserError, match=r"the masked member's network \(ResNet\) has no attention blocks"):
        explain(model, torch.rand(1, 3, 32, 32))


def test_rollout_keeps_the_explainer_contract_on_a_vit():
    net = tiny_vit(dynamic=True)  # the conformance images are 32 x 40
    testing.check_explainer(Registry().create("explainers", "attention-rollout"), name="attention-rollout",
                            model=net, target_layers=[net.blocks[-1]])


# -- through the CLI -----------------------------------------------------------------------------------------

GRID = """\
name: rollout
seeds: [0]
datasets: [{name: synthetic, n_train: 4, n_val: 0, n_test: 4, image_size: 32}]
backbones: [resnet18, tiny-vit]
masks: [white]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [attention-rollout]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


class TinyVitBackbone:
    def __init__(self):
        pass

    def build(self, num_classes, *, pretrained=True):
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                 num_classes=num_classes)

    def target_layers(self, model):
        return [model.blocks[-1].norm1]


def test_a_run_fails_the_resnet_cells_with_the_refusal_and_explains_the_vit(registry, add_plugin, write_grid, tmp_path):
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("tiny-vit", TinyVitBackbone)

    add_plugin(Plugin(), name="tiny-vit-plugin")
    out = tmp_path / "run"
    code = main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--quiet"])
    summary = json.loads((out / "run.json").read_text())
    assert code == 1 and summary["cells_failed"] > 0 and summary["cells_done"] > 0
    table = pd.read_csv(out / "leaderboard.csv")
    failed = table[table["status"] == "failed"]
    assert set(failed["backbone"]) == {"resnet18"}
    assert failed["error"].str.contains("has no attention blocks").all()
    assert failed["error"].str.contains("ResNet").all()
    done = table[table["status"] != "failed"]
    assert set(done["backbone"]) == {"tiny-vit"}
