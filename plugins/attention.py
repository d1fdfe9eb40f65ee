"""Attention-native explainers for token models (timm's ViT and DeiT, with or without register tokens).

``attention-rollout`` is Abnar & Zuidema's rollout (2020). It reads the attention matrices themselves, so
it applies only to a network whose blocks attend globally over one sequence of tokens laid on a patch grid;
any other backbone (a CNN, Swin's windowed attention) is refused with an error naming it, never given a map.
"""

from __future__ import annotations

from typing import Literal

from xaibench.errors import UserError
from xaibench.kit.hookspecs import hookimpl
from xaibench_plugins.explainers import _unit_range, is_ensemble

NEEDS = "attention rollout needs a transformer with global attention blocks over patch tokens (timm's ViT, DeiT)"


def _architecture(net) -> str:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(net).__name__)


def _attention_modules(net, what: str) -> list:
    """The attention modules of a timm token model, in the order of its blocks; a ``UserError`` naming
    ``what`` when ``net`` is not one (no prefix-token count, no patch embedding, no attention module)."""
    # the transformer blocks' own attention only (not an attention-pooling head's, which has no N x N matrix)
    body = getattr(net, "blocks", net)
    blocks = [m for m in body.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    if not hasattr(net, "num_prefix_tokens") or not hasattr(net, "patch_embed") or not blocks:
        found = "attention modules but no class/patch token layout (windowed attention?)" if blocks else "no attention blocks"
        raise UserError(f"{what} ({_architecture(net)}) has {found}: {NEEDS}; use a CAM explainer for it")
    return blocks


def _grid(net, size) -> tuple[int, int]:
    """The patch grid (h, w) the network lays its tokens on for images of ``size`` (H, W)."""
    embed = net.patch_embed
    if getattr(net, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
        return tuple(embed.dynamic_feat_size(tuple(size)))
    return tuple(embed.grid_size)


def _rollout(attentions, prefix: int, grid, fusion: str, what: str, net):
    """Rollout (B, h, w) of per-block attentions [(B, heads, N, N)]: heads fused, identity added, rows
    re-normalised, the blocks' matrices multiplied (first block rightmost); the class token's row over
    the patch tokens (the mean of the patch tokens' rows when there is no class token)."""
    import torch

    count = prefix + grid[0] * grid[1]
    rollout = None
    for attention in attentions:
        if attention.ndim != 4 or attention.shape[-1] != count or attention.shape[-2] != count:
            raise UserError(f"{what} ({_architecture(net)}) gave attention of shape {tuple(attention.shape)}, not "
                            f"(B, heads, {count}, {count}) for {prefix} prefix tokens on a {grid[0]}x{grid[1]} "
                            f"patch grid: {NEEDS}")
        fused = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1),
                 "min": lambda a: a.amin(dim=1)}[fusion](attention.float())
        fused = fused + torch.eye(count, device=fused.device, dtype=fused.dtype)
        fused = fused / fused.sum(dim=-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout
    has_class_token = getattr(net, "cls_token", None) is not None
    rows = rollout[:, 0, prefix:] if has_class_token else rollout[:, prefix:, prefix:].mean(dim=1)
    return rows.reshape(len(rows), *grid)


class AttentionRollout:
    """Attention rollout (Abnar & Zuidema 2020) of a timm token model (ViT, DeiT, with register tokens).

    ``explain(model, images, targets, *, target_layers) -> np.ndarray`` float32 (B, H, W) in [0, 1].
    Per block the attention matrix (B, heads, N, N) is fused over heads (``head_fusion``: mean, max or
    min), the identity added (the residual path) and each row re-normalised to sum to 1; the blocks'
    matrices are multiplied in order. The map is the class token's row over the patch tokens (timm's
    ``num_prefix_tokens`` class and register tokens dropped; without a class token the mean of the patch
    tokens' rows), reshaped to the patch grid at the images' size, upsampled bilinearly
    (``align_corners=False``) and min-max scaled per image. Class-agnostic: ``targets`` are ignored;
    ``target_layers`` too (every block is used).

    The attention weights are read from the softmax's output: timm's fused path
    (``F.scaled_dot_product_attention``) is switched off on each attention module for the pass and
    restored after.

    An ensemble (raw and masked member) whose members are both token models gets the weighted sum of the
    members' rollouts (before scaling), each member weighted by the derivative of the mixed target logit
    with respect to that member's target logit, normalised per image to sum to 1 (for ``logit-mix``:
    α and 1 − α; α = 1 is the raw member's map exactly). A backbone, or ensemble member, without global
    attention over patch tokens (a ResNet, Swin) is an error naming it."""

    uses_ground_truth = False

    def __init__(self, *, head_fusion: Literal["mean", "max", "min"] = "mean"):
        self.head_fusion = head_fusion

    def explain(self, model, images, targets, *, target_layers, masks=None, bands=None):
        import torch
        import torch.nn.functional as F

        if is_ensemble(model):
            members = [("the raw member's network", model.raw), ("the masked member's network", model.masked)]
        else:
            members = [("the backbone network", model)]
        nets = [(what, getattr(member, "net", member)) for what, member in members]
        blocks = [_attention_modules(net, what) for what, net in nets]  # refuse before any forward pass

        captured = [[] for _ in nets]
        handles, fused_before = [], []
        for store, modules in zip(captured, blocks):
            for module in modules:
                fused_before.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(
                    lambda _m, inputs, _out, store=store: store.append(inputs[0].detach())))
        member_logits = []
        if len(members) == 2:
            def as_leaf(_m, _inputs, output):
                output = output.detach().requires_grad_()
                member_logits.append(output)
                return output
            handles += [member.register_forward_hook(as_leaf) for _, member in members]
        try:
            with torch.enable_grad() if len(members) == 2 else torch.no_grad():
                logits = model(images)
                if len(members) == 2:
                    picked = targets.to(logits.device).long().view(-1, 1)
                    score = logits.gather(1, picked).sum()
                    grads = torch.autograd.grad(score, member_logits, allow_unused=True)
                    weights = torch.stack([torch.zeros(len(images), device=logits.device) if g is None
                                           else g.gather(1, picked)[:, 0].clamp(min=0) for g in grads])
                    total = weights.sum(dim=0, keepdim=True)
                    weights = torch.where(total > 0, weights / torch.where(total > 0, total, 1.0), 0.5)
                else:
                    weights = torch.ones(1, len(images), device=logits.device)
        finally:
            for handle in handles:
                handle.remove()
            for module, fused in fused_before:
                module.fused_attn = fused

        size = tuple(images.shape[-2:])
        maps = None
        for (what, net), attentions, weight in zip(nets, captured, weights):
            grid = _grid(net, size)
            rolled = _rollout(attentions, int(net.num_prefix_tokens), grid, self.head_fusion, what, net)
            rolled = rolled * weight.view(-1, 1, 1).to(rolled.dtype)
            maps = rolled if maps is None else maps + rolled
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return _unit_range(maps).cpu().numpy()


@hookimpl
def register_explainers(register):
    register("attention-rollout", AttentionRollout)
