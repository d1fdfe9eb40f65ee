"""The conformance checks of the torch components: masks, backbones, ensembles and explainers."""

from __future__ import annotations

import copy
import itertools

import numpy as np

from xaibench.kit import contracts
from xaibench.kit.models import ensemble_model, layer_name
from xaibench.kit.testing._core import _call, _devices, _expect, _label, _valid
from xaibench.kit.testing._inputs import FOUR_BANDS, HEIGHT, RGB_BANDS, WIDTH, _image_batch, tiny_classifier

# -- masks -------------------------------------------------------------------------------------------------


def check_mask(mask, *, name: str | None = None, devices=None) -> None:
    """``mask(images, foreground)``: a new tensor of the images' shape, dtype and device, equal to the images
    on the foreground, changed on the background, in [0, 1]; deterministic; inputs unmodified."""
    import torch

    label = _label("masks", mask, name)
    band_sets = (RGB_BANDS, FOUR_BANDS) if contracts.capability(mask, "bands", "masks") else (None,)
    for device, bands in itertools.product(_devices(devices), band_sets):
        extra = {} if bands is None else {"bands": bands}
        for dtype in (torch.float32, torch.float64) if device == "cpu" else (torch.float32,):
            images, foreground = _image_batch(channels=3 if bands is None else bands.count)
            images, foreground = images.to(device, dtype), foreground.to(device)
            before = images.clone(), foreground.clone()
            shown = "" if bands is None else f", bands={bands.describe()}"
            call = f"mask(images, foreground{shown}) with {dtype} images {tuple(images.shape)} on {device}"
            out = _call(label, call, mask, images, foreground, **extra)
            _expect(torch.equal(images, before[0]) and torch.equal(foreground, before[1]), label,
                    f"{call} modified its inputs", "never write into images or foreground; use torch.where")
            _valid(label, call, contracts.validate_masked, out, images, foreground)
            keep = foreground.expand_as(images)
            _expect(not torch.equal(out[~keep], images[~keep]), label, f"{call} left the background as it was",
                    "replace the pixels where foreground is False")
            _expect(torch.equal(_call(label, call, mask, images, foreground, **extra), out), label,
                    f"{call} differs between two calls", "make the mask deterministic (seed any randomness "
                    "from its parameters)")


# -- backbones ---------------------------------------------------------------------------------------------


def check_backbone(backbone, *, name: str | None = None, num_classes: int = 3, image_size: int = 32,
                   devices=None) -> None:
    """``build(num_classes, *, pretrained=True)``: a module mapping (B, 3, S, S) in [0, 1] to finite logits
    (B, num_classes), the same weights for the same torch seed, whose state dict loads into
    ``build(..., pretrained=False)`` (a backbone whose ``build`` takes ``bands``: all of this for RGB and
    for four bands, (B, 4, S, S), given them); ``target_layers(model)``: the model's own modules, each with a
    declared ``activation_layout(model, layer)`` its output fits (as (B, C, h, w) once read through it), on
    which the logits depend; optional ``check()``."""
    import torch

    label = _label("backbones", backbone, name)
    for method in ("build", "target_layers"):
        _expect(callable(getattr(backbone, method, None)), label, f"it has no {method}() method",
                "define build(self, num_classes, *, pretrained=True) and target_layers(self, model)")
    if hasattr(backbone, "check"):
        backbone.check()  # a UserError here means missing weights: let it through unchanged
    band_sets = (RGB_BANDS, FOUR_BANDS) if contracts.capability(backbone, "bands", "backbones") else (None,)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        for bands in band_sets:
            _check_backbone(backbone, label, num_classes, image_size, devices, bands)


def _check_backbone(backbone, label, num_classes, image_size, devices, bands):
    """The checks of ``check_backbone`` for images of ``bands`` (given to ``build``), or RGB ones (None)."""
    import torch

    extra = {} if bands is None else {"bands": bands}
    channels = 3 if bands is None else bands.count
    builds = []
    for _ in range(2):
        torch.manual_seed(0)
        builds.append(_call(label, f"build({num_classes}, pretrained=False{_shown(bands)})", backbone.build,
                            num_classes, pretrained=False, **extra))
    model, twin = builds
    _valid(label, f"build({num_classes}, pretrained=False)", contracts.validate_model, model)
    state, twin_state = model.state_dict(), twin.state_dict()
    _expect(state.keys() == twin_state.keys() and all(torch.equal(state[k], twin_state[k]) for k in state), label,
            "two builds under the same torch seed have different weights",
            "initialise from torch's global generator only (the runner seeds it before build)")
    trained = _call(label, f"build({num_classes}{_shown(bands)})", backbone.build, num_classes, **extra)
    _call(label, f"loading build({num_classes}{_shown(bands)})'s state dict into build({num_classes}, "
                 f"pretrained=False{_shown(bands)})", model.load_state_dict, trained.state_dict())
    for device in _devices(devices):
        net = copy.deepcopy(model).to(device).eval()
        images = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
        layers = _call(label, "target_layers(model)", backbone.target_layers, net)
        _valid(label, "target_layers(model)", contracts.validate_layers, layers, net)
        activations = []

        def capture(module, inputs, output):
            activations.append(output)

        declare = contracts.capability(backbone, "activation_layout", "backbones")
        layouts = []
        for layer in layers:
            name = layer_name(net, layer)
            found = _call(label, f"activation_layout(model, {name!r})", declare, net, layer) if declare else None
            _valid(label, f"activation_layout(model, {name!r})", contracts.validate_layout, found, name)
            layouts.append((name, found))
        handles = [layer.register_forward_hook(capture) for layer in layers]
        try:
            with torch.enable_grad():
                logits = _call(label, f"model(images) with images {tuple(images.shape)}{_shown(bands)} on {device}",
                               net, images)
        finally:
            for handle in handles:
                handle.remove()
        _valid(label, f"model(images) on {device}", contracts.validate_logits, logits, 2, num_classes)
        _expect(logits.device == images.device, label, f"model(images) on {device} gave logits on {logits.device}",
                "return the logits on the images' device")
        _expect(len(activations) >= len(layers) and all(isinstance(a, torch.Tensor) and a.shape[:1] == (2,)
                                                        for a in activations), label,
                "the target layers did not run, or gave no tensor with the images in its first dimension",
                "pick target layers that the forward pass runs and that output feature maps")
        for (name, layout), activation in zip(layouts, activations):
            _valid(label, f"the output of target layer {name!r} on {device}", layout.to_channels_first, activation,
                   name)
        grads = torch.autograd.grad(logits[:, 0].sum(), activations, allow_unused=True)
        _expect(all(g is not None for g in grads), label, "the logits do not depend on the target layers' output",
                "choose target layers on the path to the logits (e.g. the last convolutional block)")


def _shown(bands) -> str:
    return "" if bands is None else f", bands={bands.describe()}"


# -- ensembles ---------------------------------------------------------------------------------------------


def check_ensemble(ensemble, *, name: str | None = None, devices=None) -> None:
    """``ensemble(raw_logits, masked_logits)``: (B, C) to (B, C) of the same dtype and device, differentiable,
    deterministic, inputs unmodified; optional ``reduces_to()`` is "raw", "masked" or None and true."""
    import torch

    label = _label("ensembles", ensemble, name)
    reduces = _call(label, "reduces_to()", ensemble.reduces_to) if hasattr(ensemble, "reduces_to") else None
    _expect(reduces in ("raw", "masked", None), label, f"reduces_to() returned {reduces!r}",
            'return "raw", "masked" or None')
    for device in _devices(devices):
        generator = torch.Generator().manual_seed(0)
        raw = torch.randn(2, 3, generator=generator).to(device).requires_grad_()
        masked = torch.randn(2, 3, generator=generator).to(device).requires_grad_()
        before = raw.detach().clone(), masked.detach().clone()
        call = f"ensemble(raw_logits, masked_logits) with float32 (2, 3) on {device}"
        out = _call(label, call, ensemble, raw, masked)
        _valid(label, call, contracts.validate_ensemble, out, raw)
        _expect(out.requires_grad and any(g is not None for g in torch.autograd.grad(
            out.sum(), [raw, masked], allow_unused=True)), label, f"{call} is not differentiable",
            "compute with torch operations on the inputs (no .detach(), .numpy() or torch.no_grad)")
        _expect(torch.equal(raw.detach(), before[0]) and torch.equal(masked.detach(), before[1]), label,
                f"{call} modified its inputs", "never write into the logits given")
        _expect(torch.equal(_call(label, call, ensemble, raw, masked), out), label, f"{call} differs between calls",
                "make the rule deterministic")
        if reduces is not None:
            member = raw if reduces == "raw" else masked
            _expect(torch.allclose(out, member), label, f"reduces_to() says {reduces!r} but the output differs "
                    f"from the {reduces} logits", "return None from reduces_to() unless the rule equals that member")


# -- explainers --------------------------------------------------------------------------------------------


def check_explainer(explainer, *, name: str | None = None, model=None, target_layers=None, layout=None,
                    devices=None) -> None:
    """``explain(model, images, targets, *, target_layers, masks)``: float32 numpy maps (B, H, W) in [0, 1] for
    a model and for a two-member ensemble model; deterministic; images, targets, masks, weights, gradients,
    hooks, ``requires_grad`` and train/eval mode left as they were. ``model``/``target_layers`` default to
    ``tiny_classifier()`` and its ``features``; give both to check on your own architecture, and
    ``layout`` (an ``ActivationLayout``, channels-first by default) where their outputs are not
    channels-first. An explainer whose ``explain`` takes ``layouts`` is given ``layouts(layer) -> layout``;
    one that takes ``bands`` is given them, and is also checked on four-band images (with the default
    model, built for four bands)."""
    if (model is None) != (target_layers is None):
        raise ValueError("check_explainer: give both model and target_layers (modules of that model), or neither")
    label = _label("explainers", explainer, name)
    uses_ground_truth = getattr(explainer, "uses_ground_truth", False)
    _expect(isinstance(uses_ground_truth, bool), label, f"uses_ground_truth is {uses_ground_truth!r}",
            "set the class attribute uses_ground_truth = True or False")
    layout = contracts.ActivationLayout.channels_first() if layout is None else layout
    extra = {"layouts": lambda layer: layout} if contracts.capability(explainer, "layouts", "explainers") else {}
    band_sets = [None]
    if contracts.capability(explainer, "bands", "explainers"):
        band_sets = [RGB_BANDS, FOUR_BANDS] if model is None else [RGB_BANDS]
    for bands in band_sets:
        _check_explainer(explainer, label, model, target_layers, layout, uses_ground_truth,
                         extra if bands is None else {**extra, "bands": bands}, devices)


def _check_explainer(explainer, label, model, target_layers, layout, uses_ground_truth, extra, devices):
    """The checks of ``check_explainer`` with the keyword arguments ``extra`` (``bands`` among them, where
    given: the default models are then built for that many bands)."""
    channels = extra["bands"].count if "bands" in extra else 3
    second = tiny_classifier(seed=1, channels=channels) if model is None else model
    model = tiny_classifier(channels=channels) if model is None else model
    for device in _devices(devices):
        single = copy.deepcopy(model).to(device)
        raw, masked = copy.deepcopy(model).to(device), copy.deepcopy(second).to(device)
        ensemble = ensemble_model(raw, masked, lambda r, m: 0.5 * r + 0.5 * m).eval()

        def layers_of(net):
            if target_layers is None:
                return [net.features]
            return [dict(zip(map(id, model.modules()), net.modules()))[id(layer)] for layer in target_layers]

        for what, net, layers in (("a model", single, layers_of(single)),
                                  ("an ensemble model", ensemble, layers_of(raw) + layers_of(masked))):
            _check_explanation(explainer, label, f"{what} on {device}", net, layers, uses_ground_truth, extra)


def _check_explanation(explainer, label, where, model, layers, uses_ground_truth, extra):
    import torch

    channels = extra["bands"].count if "bands" in extra else 3
    images = _image_batch(channels=channels)[0].to(next(model.parameters()).device)
    targets = torch.tensor([0, 1], device=images.device)
    masks = _image_batch()[1][:, 0].numpy() if uses_ground_truth else None
    before = (images.clone(), targets.clone(), None if masks is None else masks.copy(),
              {k: v.clone() for k, v in model.state_dict().items()},
              [p.requires_grad for p in model.parameters()], model.training, _hook_count(model))
    call = (f"explain({where}, images (2, {channels}, {HEIGHT}, {WIDTH}), targets, target_layers=..., masks=..."
            f"{_shown(extra.get('bands'))})")
    maps = _call(label, call, explainer.explain, model, images, targets, target_layers=layers, masks=masks, **extra)
    _valid(label, call, contracts.validate_maps, maps, 2, HEIGHT, WIDTH)
    again = _call(label, call, explainer.explain, model, images, targets, target_layers=layers, masks=masks,
                  **extra)
    _expect(np.array_equal(again, maps), label, f"{call} differs between two calls",
            "make explanations deterministic (seed any randomness from the parameters and the image)")
    state = model.state_dict()
    _expect(torch.equal(images, before[0]) and torch.equal(targets, before[1])
            and (masks is None or np.array_equal(masks, before[2])), label, f"{call} modified its inputs",
            "never write into images, targets or masks")
    _expect(all(torch.equal(state[k], v) for k, v in before[3].items()), label, f"{call} changed the model's weights",
            "explaining must not train or modify the model")
    _expect(all(p.grad is None for p in model.parameters()), label, f"{call} left gradients on the parameters",
            "take gradients with torch.autograd.grad, or call model.zero_grad(set_to_none=True) afterwards")
    _expect([p.requires_grad for p in model.parameters()] == before[4] and model.training == before[5], label,
            f"{call} changed requires_grad or train/eval mode", "leave the model's flags as they were")
    _expect(_hook_count(model) == before[6], label, f"{call} left hooks on the model",
            "remove every hook it registers (handle.remove() in a finally block)")


def _hook_count(model) -> int:
    return sum(len(getattr(m, attr, {})) for m in model.modules()
               for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
