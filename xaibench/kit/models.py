"""Model plumbing: ensembles as modules and weight files on disk (safetensors only)."""

from __future__ import annotations

import os
from pathlib import Path

from xaibench.errors import UserError


def ensemble_model(raw, masked, rule):
    """An ``nn.Module`` whose logits are ``rule(raw(x), masked(x))``; differentiable into both members."""
    import torch

    class EnsembleModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.raw = raw
            self.masked = masked
            self.rule = rule

        def forward(self, images):
            return rule(self.raw(images), self.masked(images))

    return EnsembleModel()


def resolve_module(module, dotted: str, *, what: str = "target layer"):
    """The submodule at a dotted path (``"layer4.1.conv2"``; integer parts index sequences).

    Raises ``UserError`` naming ``what`` (the parameter that gave the path) and the missing part."""
    found = module
    for part in dotted.split("."):
        try:
            found = found[int(part)] if part.lstrip("-").isdigit() else getattr(found, part)
        except (AttributeError, IndexError, TypeError):
            raise UserError(
                f"{what}={dotted!r}: no {part!r} in {type(found).__name__}; give a dotted path inside the "
                f"backbone network, e.g. 'layer3' or 'layer4.1.conv2' for resnet18"
            ) from None
    return found


def layer_name(model, layer) -> str | None:
    """The dotted path of the module ``layer`` inside ``model`` (``"net.layer4"``; ``""`` for ``model``
    itself), or None where it is not one of ``model``'s modules."""
    for name, module in model.named_modules(remove_duplicate=False):
        if module is layer:
            return name
    return None


def save_weights(model, path: Path) -> None:
    """Write the model's state dict as safetensors, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(state, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file is never left behind (a full disk, an interrupt)
        raise


def load_weights(model, path: Path):
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model
