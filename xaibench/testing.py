"""Conformance checks for plugin authors: call them from your own tests.

    import pytest
    from xaibench.testing import check_component, registered

    @pytest.mark.parametrize("name", registered("masks", distribution="my-plugin"))
    def test_my_masks_keep_the_contract(name):
        check_component("masks", name)

``check_<kind>(component)`` (one per hook: ``check_dataset``, ``check_mask``, ``check_backbone``,
``check_ensemble``, ``check_explainer``, ``check_seeder``, ``check_segmenter``, ``check_executor``) feeds a
built component tiny inputs (2 images of 32×40 pixels; backbones at 32 pixels) and checks the call contract
of ``xaibench.contracts``: types, shapes, dtypes and value ranges of what it returns, determinism (the same
input twice gives the same output), inputs left unmodified, the contract's attributes, and devices (CPU
always, CUDA too when it is available). A violation raises ``AssertionError`` naming the component, what is
wrong and what to fix. ``check_component(kind, name, **params)`` builds the component from the registry and
also checks its factory (keyword-only parameters, resolvable annotations). A dataset whose optional
``check()`` finds its data missing raises that ``UserError`` unchanged: that is not a contract violation.
"""

from __future__ import annotations

import copy
import inspect
import json
import typing

import numpy as np

from .contracts import Prompts
from .registry import KINDS, canonical_name, get_registry, signature_model

SPLITS = ("train", "val", "test")
HEIGHT, WIDTH = 32, 40  # not square, so swapped axes show


def registered(kind: str, *, distribution: str | None = None, registry=None) -> list[str]:
    """Sorted names of the registered components of ``kind``, optionally only those of one distribution."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    components = (registry or get_registry()).components[kind]
    return sorted(name for name, c in components.items()
                  if distribution is None or canonical_name(c.distribution) == canonical_name(distribution))


def check_component(kind: str, name: str, /, *, registry=None, **params):
    """Build ``kind``/``name`` with ``params`` from the registry, check its factory and its contract.

    Returns the built component."""
    registry = registry or get_registry()
    component = registry.get(kind, name)
    label = f"{kind[:-1]} {name!r} (plugin {component.plugin!r}, distribution {component.distribution!r})"
    _check_factory(component.factory, label)
    built = registry.create(kind, name, **params)
    CHECKS[kind](built, name=label)
    if kind == "datasets":
        fresh = registry.create(kind, name, **params).fingerprint()
        _expect(fresh == built.fingerprint(), label, "two instances with the same parameters have different "
                "fingerprints", "derive fingerprint() from the parameters and the data only (no time, no id())")
    return built


# -- helpers ---------------------------------------------------------------------------------------------


def _expect(condition, label: str, problem: str, fix: str) -> None:
    if not condition:
        raise AssertionError(f"{label}: {problem}; {fix}")


def _call(label: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception becomes an ``AssertionError`` saying which contract call failed."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise AssertionError(f"{label}: {what} raised {type(exc).__name__}: {exc}; it must accept the inputs "
                             f"of its contract (docs/plugins.md)") from exc


def _label(kind: str, component, name: str | None) -> str:
    return name or f"{kind[:-1]} {type(component).__name__}"


def _devices(devices) -> list[str]:
    import torch

    return list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _check_factory(factory, label: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label}: the factory has no inspectable signature ({exc}); register a class "
                             f"whose __init__ takes keyword-only parameters") from None
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    _expect(not positional, label, f"parameters {positional} can be given by position",
            "make every parameter keyword-only: def __init__(self, *, name=default)")
    try:
        typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory, include_extras=True)
    except Exception as exc:
        raise AssertionError(f"{label}: the parameters' annotations cannot be resolved ({type(exc).__name__}: "
                             f"{exc}), so grid values would go unvalidated; import every name used in an "
                             f"annotation at module level") from None


def _image_batch(seed: int = 0):
    """float32 (2, 3, H, W) in [0, 1] and bool foreground (2, 1, H, W) with both values in each image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=generator)
    foreground = torch.zeros(2, 1, HEIGHT, WIDTH, dtype=torch.bool)
    foreground[0, :, 8:20, 10:30] = True
    rows, cols = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    foreground[1, 0] = ((rows - 20) ** 2 + (cols - 12) ** 2 <= 49) | (cols >= 34)
    return images, foreground


def _uint8_image() -> np.ndarray:
    """uint8 (H, W, 3): noise with a red rectangle, an object a segmenter can find."""
    image = np.random.default_rng(0).integers(0, 120, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[8:22, 14:32] = (220, 40, 40)
    return image


def _smooth_map(seed: int = 3) -> np.ndarray:
    """float32 (H, W) in [0, 1]: a coarse random grid upsampled bilinearly, like a CAM."""
    import torch

    grid = torch.from_numpy(np.random.default_rng(seed).random((5, 5)).astype(np.float32))[None, None]
    up = torch.nn.functional.interpolate(grid, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    return np.clip(up[0, 0].numpy(), 0.0, 1.0)


def _bump_map() -> np.ndarray:
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    return np.exp(-((rows - 14) ** 2 + (cols - 24) ** 2) / 18.0).astype(np.float32)


def tiny_classifier(num_classes: int = 2, seed: int = 0):
    """A two-convolution CNN (eval mode): float (B, 3, H, W) in [0, 1] → logits (B, num_classes).

    Its CAM target layer is ``model.features`` (output (B, 16, H/2, W/2))."""
    import torch
    from torch import nn

    class TinyClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

        def forward(self, images):
            return self.head(self.features(images))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyClassifier().eval()


def _hook_count(model) -> int:
    return sum(len(getattr(m, attr, {})) for m in model.modules()
               for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


# -- datasets ----------------------------------------------------------------------------------------------


def check_dataset(dataset, *, name: str | None = None, max_samples: int | None = None) -> None:
    """``classes``, ``split(name)`` for train/val/test (``Sample`` fields, one image size, unique ids, the
    same samples on every call), ``fingerprint()`` and the optional ``check``/``describe``/``fetch``/
    ``prepare``. ``max_samples`` limits the per-sample checks to the first samples of each split."""
    label = _label("datasets", dataset, name)
    if hasattr(dataset, "check"):
        dataset.check()  # a UserError here means missing data: let it through unchanged
    classes = getattr(dataset, "classes", None)
    _expect(isinstance(classes, (list, tuple)) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes), label, f"classes is {classes!r}",
            "set classes to a list of at least 2 distinct class-name strings")
    size, ids, counts = None, set(), {}
    for split in SPLITS:
        samples = _call(label, f"split({split!r})", dataset.split, split)
        _expect(hasattr(samples, "__len__") and hasattr(samples, "__iter__"), label,
                f"split({split!r}) returned {type(samples).__name__}", "return a list of xaibench.contracts.Sample")
        samples = list(samples)
        counts[split] = len(samples)
        samples = samples[:max_samples]
        for sample in samples:
            size = _check_sample(sample, label, split, classes, size, ids)
        again = list(dataset.split(split))[:max_samples]
        same = len(again) == len(samples) and all(
            a.id == b.id and a.label == b.label and np.array_equal(a.image, b.image)
            and _same_mask(a.mask, b.mask) and _same_mask(getattr(a, "reference", None), getattr(b, "reference", None))
            for a, b in zip(samples, again))
        _expect(same, label, f"split({split!r}) gave different samples on a second call",
                "make splits deterministic: same samples, same order, every time (seed any randomness)")
    _expect(counts["train"] > 0 and counts["test"] > 0, label, f"split sizes are {counts}",
            "train and test need at least one sample each (val may be empty)")
    fingerprint = _call(label, "fingerprint()", dataset.fingerprint)
    _expect(isinstance(fingerprint, str) and fingerprint and fingerprint == dataset.fingerprint(), label,
            f"fingerprint() returned {fingerprint!r}, or changed between calls",
            "return a non-empty string (e.g. a sha256 of parameters and content) that is the same every call")
    if hasattr(dataset, "describe"):
        details = _call(label, "describe()", dataset.describe)
        _expect(isinstance(details, dict), label, f"describe() returned {type(details).__name__}",
                "return a dict of JSON-serialisable facts")
        _call(label, "json.dumps(describe())", json.dumps, details)
    if hasattr(dataset, "fetch"):
        _expect(callable(dataset.fetch), label, "fetch is not callable", "define fetch(self) -> Path")
    prepare = getattr(type(dataset), "prepare", None)
    if prepare is not None:
        _expect(isinstance(inspect.getattr_static(type(dataset), "prepare"), staticmethod), label,
                "prepare is not a static method", "define it as @staticmethod def prepare(*, option=...)")
        _check_factory(prepare, f"{label} prepare()")
        _call(label, "building the option model of prepare()", signature_model, prepare, "prepare")


def _same_mask(a, b) -> bool:
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def _check_sample(sample, label, split, classes, size, ids):
    missing = [f for f in ("id", "image", "label", "mask") if not hasattr(sample, f)]
    _expect(not missing, label, f"a {split} sample lacks {missing}", "return xaibench.contracts.Sample objects")
    where = f"{split} sample {sample.id!r}"
    _expect(isinstance(sample.id, str) and sample.id not in ids, label, f"{where}: id is not a unique string",
            "give every sample of the dataset its own string id")
    ids.add(sample.id)
    image = sample.image
    _expect(isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3,
            label, f"{where}: image is {getattr(image, 'dtype', type(image).__name__)} "
            f"{getattr(image, 'shape', '')}", "images are uint8 numpy arrays (H, W, 3), RGB")
    _expect(size is None or image.shape[:2] == size, label, f"{where}: image size {image.shape[:2]} differs from "
            f"{size}", "resize every image of the dataset to one size (e.g. an image_size parameter)")
    _expect(isinstance(sample.label, (int, np.integer)) and not isinstance(sample.label, bool)
            and 0 <= sample.label < len(classes), label, f"{where}: label {sample.label!r}",
            f"labels are int indices into classes (0 to {len(classes) - 1})")
    mask = sample.mask
    _expect(mask is None or (isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == image.shape[:2]),
            label, f"{where}: mask is {getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}",
            "masks are bool numpy arrays (H, W) matching the image, or None where there is no annotation")
    reference = getattr(sample, "reference", None)
    _expect(reference is None or (mask is not None and isinstance(reference, np.ndarray) and reference.dtype == bool
                                  and reference.shape == image.shape[:2]),
            label, f"{where}: reference is {getattr(reference, 'dtype', type(reference).__name__)} "
            f"{getattr(reference, 'shape', '')} (mask {'None' if mask is None else 'given'})",
            "a reference is a bool numpy array (H, W) matching the image, given only beside a mask")
    return image.shape[:2]


# -- masks -------------------------------------------------------------------------------------------------


def check_mask(mask, *, name: str | None = None, devices=None) -> None:
    """``mask(images, foreground)``: a new tensor of the images' shape, dtype and device, equal to the images
    on the foreground, changed on the background, in [0, 1]; deterministic; inputs unmodified."""
    import torch

    label = _label("masks", mask, name)
    for device in _devices(devices):
        for dtype in (torch.float32, torch.float64) if device == "cpu" else (torch.float32,):
            images, foreground = _image_batch()
            images, foreground = images.to(device, dtype), foreground.to(device)
            before = images.clone(), foreground.clone()
            call = f"mask(images, foreground) with {dtype} images (2, 3, {HEIGHT}, {WIDTH}) on {device}"
            out = _call(label, call, mask, images, foreground)
            _expect(isinstance(out, torch.Tensor) and out.shape == images.shape and out.dtype == dtype
                    and out.device == images.device, label,
                    f"{call} returned {type(out).__name__} {getattr(out, 'dtype', '')} "
                    f"{tuple(getattr(out, 'shape', ()))} on {getattr(out, 'device', '?')}",
                    "return a tensor of the images' shape, dtype and device (build fills with "
                    "dtype=images.dtype, device=images.device)")
            _expect(torch.equal(images, before[0]) and torch.equal(foreground, before[1]), label,
                    f"{call} modified its inputs", "never write into images or foreground; use torch.where")
            keep = foreground.expand_as(images)
            _expect(torch.equal(out[keep], images[keep]), label, f"{call} changed foreground pixels",
                    "leave every pixel where foreground is True exactly as it was")
            _expect(not torch.equal(out[~keep], images[~keep]), label, f"{call} left the background as it was",
                    "replace the pixels where foreground is False")
            _expect(bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1, label,
                    f"{call} returned values outside [0, 1]", "keep the result in [0, 1] (clamp it)")
            _expect(torch.equal(_call(label, call, mask, images, foreground), out), label,
                    f"{call} differs between two calls", "make the mask deterministic (seed any randomness "
                    "from its parameters)")


# -- backbones ---------------------------------------------------------------------------------------------


def check_backbone(backbone, *, name: str | None = None, num_classes: int = 3, image_size: int = 32,
                   devices=None) -> None:
    """``build(num_classes, *, pretrained=True)``: a module mapping (B, 3, S, S) in [0, 1] to finite logits
    (B, num_classes), the same weights for the same torch seed, whose state dict loads into
    ``build(..., pretrained=False)``; ``target_layers(model)``: the model's own modules, giving (B, C, h, w)
    activations the logits depend on; optional ``check()``."""
    import torch

    label = _label("backbones", backbone, name)
    for method in ("build", "target_layers"):
        _expect(callable(getattr(backbone, method, None)), label, f"it has no {method}() method",
                "define build(self, num_classes, *, pretrained=True) and target_layers(self, model)")
    if hasattr(backbone, "check"):
        backbone.check()  # a UserError here means missing weights: let it through unchanged
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        _check_backbone(backbone, label, num_classes, image_size, devices)


def _check_backbone(backbone, label, num_classes, image_size, devices):
    import torch

    builds = []
    for _ in range(2):
        torch.manual_seed(0)
        builds.append(_call(label, f"build({num_classes}, pretrained=False)", backbone.build, num_classes,
                            pretrained=False))
    model, twin = builds
    _expect(isinstance(model, torch.nn.Module), label, f"build() returned {type(model).__name__}",
            "return a torch.nn.Module")
    state, twin_state = model.state_dict(), twin.state_dict()
    _expect(state.keys() == twin_state.keys() and all(torch.equal(state[k], twin_state[k]) for k in state), label,
            "two builds under the same torch seed have different weights",
            "initialise from torch's global generator only (the runner seeds it before build)")
    trained = _call(label, f"build({num_classes})", backbone.build, num_classes)
    _call(label, f"loading build({num_classes})'s state dict into build({num_classes}, pretrained=False)",
          model.load_state_dict, trained.state_dict())
    for device in _devices(devices):
        net = copy.deepcopy(model).to(device).eval()
        images = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
        layers = _call(label, "target_layers(model)", backbone.target_layers, net)
        modules = {id(m) for m in net.modules()}
        _expect(isinstance(layers, (list, tuple)) and layers and all(id(layer) in modules for layer in layers),
                label, "target_layers(model) is not a non-empty list of the model's own modules",
                "return [the module inside `model` that CAM explainers should hook], e.g. [model.net.layer4]")
        activations = []

        def capture(module, inputs, output):
            activations.append(output)

        handles = [layer.register_forward_hook(capture) for layer in layers]
        try:
            with torch.enable_grad():
                logits = _call(label, f"model(images) with images (2, 3, {image_size}, {image_size}) on {device}",
                               net, images)
        finally:
            for handle in handles:
                handle.remove()
        _expect(isinstance(logits, torch.Tensor) and logits.shape == (2, num_classes) and logits.is_floating_point()
                and logits.device == images.device and bool(torch.isfinite(logits).all()), label,
                f"model(images) on {device} returned {getattr(logits, 'dtype', type(logits).__name__)} "
                f"{tuple(getattr(logits, 'shape', ()))}", f"return finite float logits (B, num_classes={num_classes}) "
                "on the images' device")
        _expect(len(activations) >= len(layers) and all(isinstance(a, torch.Tensor) and a.ndim == 4
                                                        and a.shape[0] == 2 for a in activations), label,
                "the target layers did not run, or gave no (B, C, h, w) output",
                "pick target layers that the forward pass runs and that output feature maps")
        grads = torch.autograd.grad(logits[:, 0].sum(), activations, allow_unused=True)
        _expect(all(g is not None for g in grads), label, "the logits do not depend on the target layers' output",
                "choose target layers on the path to the logits (e.g. the last convolutional block)")


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
        _expect(isinstance(out, torch.Tensor) and out.shape == (2, 3) and out.dtype == raw.dtype
                and out.device == raw.device and bool(torch.isfinite(out).all()), label,
                f"{call} returned {getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}",
                "return finite logits of the inputs' shape, dtype and device")
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


def check_explainer(explainer, *, name: str | None = None, model=None, target_layers=None, devices=None) -> None:
    """``explain(model, images, targets, *, target_layers, masks)``: float32 numpy maps (B, H, W) in [0, 1] for
    a model and for a two-member ensemble model; deterministic; images, targets, masks, weights, gradients,
    hooks, ``requires_grad`` and train/eval mode left as they were. ``model``/``target_layers`` default to
    ``tiny_classifier()`` and its ``features``; give both to check on your own architecture."""
    from .models import ensemble_model

    if (model is None) != (target_layers is None):
        raise ValueError("check_explainer: give both model and target_layers (modules of that model), or neither")
    label = _label("explainers", explainer, name)
    uses_ground_truth = getattr(explainer, "uses_ground_truth", False)
    _expect(isinstance(uses_ground_truth, bool), label, f"uses_ground_truth is {uses_ground_truth!r}",
            "set the class attribute uses_ground_truth = True or False")
    second = tiny_classifier(seed=1) if model is None else model
    model = tiny_classifier() if model is None else model
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
            _check_explanation(explainer, label, f"{what} on {device}", net, layers, uses_ground_truth)


def _check_explanation(explainer, label, where, model, layers, uses_ground_truth):
    import torch

    images = _image_batch()[0].to(next(model.parameters()).device)
    targets = torch.tensor([0, 1], device=images.device)
    masks = _image_batch()[1][:, 0].numpy() if uses_ground_truth else None
    before = (images.clone(), targets.clone(), None if masks is None else masks.copy(),
              {k: v.clone() for k, v in model.state_dict().items()},
              [p.requires_grad for p in model.parameters()], model.training, _hook_count(model))
    call = f"explain({where}, images (2, 3, {HEIGHT}, {WIDTH}), targets, target_layers=..., masks=...)"
    maps = _call(label, call, explainer.explain, model, images, targets, target_layers=layers, masks=masks)
    _expect(isinstance(maps, np.ndarray) and maps.dtype == np.float32 and maps.shape == (2, HEIGHT, WIDTH), label,
            f"{call} returned {type(maps).__name__} {getattr(maps, 'dtype', '')} {getattr(maps, 'shape', '')}",
            f"return a float32 numpy array (B, H, W) = (2, {HEIGHT}, {WIDTH}) at the images' size (.cpu().numpy())")
    _expect(bool(np.isfinite(maps).all()) and maps.min() >= 0 and maps.max() <= 1, label,
            f"{call} returned values outside [0, 1]", "scale each map to [0, 1] (e.g. per-image min-max)")
    again = _call(label, call, explainer.explain, model, images, targets, target_layers=layers, masks=masks)
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


# -- seeders -----------------------------------------------------------------------------------------------


def check_seeder(seeder, *, name: str | None = None) -> None:
    """``seeder(saliency)``: ``Prompts`` with float32 (N, 2) points (x, y) inside the image and int64 labels
    in {0, 1}; at least one positive point on a map with a peak; deterministic; the map unmodified."""
    label = _label("seeders", seeder, name)
    maps = {"a smooth map": _smooth_map(), "a single bump": _bump_map(),
            "a constant map": np.full((HEIGHT, WIDTH), 0.5, np.float32), "an all-zero map": np.zeros((HEIGHT, WIDTH),
                                                                                                       np.float32)}
    for what, saliency in maps.items():
        before = saliency.copy()
        call = f"seeder(saliency) with {what}, float32 ({HEIGHT}, {WIDTH})"
        found = _call(label, call, seeder, saliency)
        _expect(isinstance(found, Prompts), label, f"{call} returned {type(found).__name__}",
                "return xaibench.contracts.Prompts(points=..., labels=...)")
        points, labels = found.points, found.labels
        _expect(isinstance(points, np.ndarray) and points.dtype == np.float32 and isinstance(labels, np.ndarray)
                and labels.dtype == np.int64, label,
                f"{call} gave points {getattr(points, 'dtype', '?')} and labels {getattr(labels, 'dtype', '?')}",
                "points are float32 (N, 2), labels int64 (N,)")
        _expect(set(labels.tolist()) <= {0, 1}, label, f"{call} gave labels {sorted(set(labels.tolist()))}",
                "label points 1 (foreground) or 0 (background)")
        x, y = points.T
        _expect(bool(np.all(np.isfinite(points).all(axis=1) & (0 <= x) & (x < WIDTH) & (0 <= y) & (y < HEIGHT))),
                label,
                f"{call} gave points outside the image", f"points are (x=column, y=row) with 0 <= x < W={WIDTH} "
                f"and 0 <= y < H={HEIGHT}")
        if what in ("a smooth map", "a single bump"):
            _expect(len(found.positive) >= 1, label, f"{call} gave no foreground point",
                    "return at least one positive point where the map has a peak")
        again = _call(label, call, seeder, saliency)
        _expect(np.array_equal(again.points, points) and np.array_equal(again.labels, labels), label,
                f"{call} differs between two calls", "make seeding deterministic for a given map")
        _expect(np.array_equal(saliency, before), label, f"{call} modified the map", "never write into the map")


# -- segmenters --------------------------------------------------------------------------------------------


def _prompts(points, labels) -> Prompts:
    return Prompts(np.asarray(points, np.float32).reshape(-1, 2), np.asarray(labels, np.int64))


def check_segmenter(segmenter, *, name: str | None = None) -> None:
    """``segment(image, prompts[, saliency=...])``: one bool (H, W) mask per prompt set (none for none),
    deterministic, inputs unmodified; ``uses_saliency`` segmenters also get one map per prompt set."""
    label = _label("segmenters", segmenter, name)
    uses_saliency = getattr(segmenter, "uses_saliency", False)
    _expect(isinstance(uses_saliency, bool), label, f"uses_saliency is {uses_saliency!r}",
            "set the class attribute uses_saliency = True or False")
    image = _uint8_image()
    prompt_sets = [_prompts([[22, 14], [3, 3]], [1, 0]), _prompts([[20, 12]], [1]), _prompts([], [])]
    saliency = [_bump_map() for _ in prompt_sets]
    before = image.copy(), [(p.points.copy(), p.labels.copy()) for p in prompt_sets], [s.copy() for s in saliency]
    extra = {"saliency": saliency} if uses_saliency else {}
    call = (f"segment(image uint8 ({HEIGHT}, {WIDTH}, 3), [positive+negative, positive, empty prompts]"
            + (", saliency=[3 maps])" if uses_saliency else ")"))
    masks = _call(label, call, segmenter.segment, image, prompt_sets, **extra)
    _expect(isinstance(masks, list) and len(masks) == 3, label,
            f"{call} returned {type(masks).__name__} of length {len(masks) if hasattr(masks, '__len__') else '?'}",
            "return a list with one mask per prompt set")
    for mask in masks:
        _expect(isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (HEIGHT, WIDTH), label,
                f"{call} gave a mask {getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}",
                f"each mask is a bool numpy array (H, W) = ({HEIGHT}, {WIDTH})")
    again = _call(label, call, segmenter.segment, image, prompt_sets, **extra)
    _expect(all(np.array_equal(a, b) for a, b in zip(masks, again)), label, f"{call} differs between calls",
            "make segmentation deterministic (seed any randomness)")
    empty = _call(label, "segment(image, [])", segmenter.segment, image, [], **({"saliency": []} if extra else {}))
    _expect(list(empty) == [], label, f"segment(image, []) returned {empty!r}", "return [] for no prompt sets")
    _expect(np.array_equal(image, before[0]) and all(np.array_equal(p.points, a) and np.array_equal(p.labels, b)
                                                     for p, (a, b) in zip(prompt_sets, before[1]))
            and all(np.array_equal(s, b) for s, b in zip(saliency, before[2])), label,
            f"{call} modified its inputs", "never write into the image, the prompts or the maps")
    if hasattr(segmenter, "segment_with_scores"):
        scored = _call(label, call.replace("segment(", "segment_with_scores(", 1), segmenter.segment_with_scores,
                       image, prompt_sets, **extra)
        _expect(isinstance(scored, tuple) and len(scored) == 2 and len(scored[0]) == 3 and len(scored[1]) == 3
                and all(np.array_equal(a, b) for a, b in zip(masks, scored[0])), label,
                "segment_with_scores did not return (the masks of segment, one score per mask)",
                "return (masks, scores) with the same masks as segment() and a float score per mask")
        _expect(all(isinstance(v, (float, np.floating)) and (np.isnan(v) or 0.0 <= v <= 1.0) for v in scored[1]),
                label, f"segment_with_scores gave scores {scored[1]!r}",
                "scores are floats in [0, 1], or NaN where a mask has no confidence")


# -- acceptors ---------------------------------------------------------------------------------------------


def check_acceptor(acceptor, *, name: str | None = None) -> None:
    """``acceptor(annotation, proposal, *, saliency, score)``: None or a bool (H, W) mask, for a confident
    and an unscored (NaN) proposal and an empty annotation; deterministic; inputs unmodified."""
    label = _label("acceptors", acceptor, name)
    _expect(callable(acceptor), label, "it is not callable",
            "define __call__(self, annotation, proposal, *, saliency, score)")
    saliency = _bump_map()
    proposal = saliency >= 0.5
    annotation = np.roll(proposal, 2, axis=1)
    cases = [(annotation, 0.9), (annotation, float("nan")), (np.zeros_like(annotation), 0.9)]
    for current, score in cases:
        inputs = current.copy(), proposal.copy(), saliency.copy()
        call = f"acceptor(annotation ({current.sum()} pixels), proposal, saliency=map, score={score})"
        out = _call(label, call, acceptor, inputs[0], inputs[1], saliency=inputs[2], score=score)
        _expect(out is None or (isinstance(out, np.ndarray) and out.dtype == bool and out.shape == proposal.shape),
                label, f"{call} returned {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}",
                f"return None (keep the annotation) or a bool numpy array {proposal.shape}")
        again = _call(label, call, acceptor, current.copy(), proposal.copy(), saliency=saliency.copy(), score=score)
        _expect((out is None and again is None) or (out is not None and again is not None
                                                    and np.array_equal(out, again)),
                label, f"{call} differs between calls", "make the rule deterministic")
        _expect(np.array_equal(inputs[0], current) and np.array_equal(inputs[1], proposal)
                and np.array_equal(inputs[2], saliency), label, f"{call} modified its inputs",
                "never write into the annotation, the proposal or the map")


# -- executors ---------------------------------------------------------------------------------------------


def _executor_task(task: int) -> tuple[int, int]:
    return task, task * task


def check_executor(executor, *, name: str | None = None) -> None:
    """``map(fn, tasks)``: ``fn(task)`` for every task, in task order, for any iterable of tasks (none: no
    results); ``close()`` afterwards. ``fn`` is a picklable module-level function."""
    label = _label("executors", executor, name)
    for method in ("map", "close"):
        _expect(callable(getattr(executor, method, None)), label, f"it has no {method}() method",
                "define map(self, fn, tasks) and close(self)")
    tasks = [3, 1, 4, 1, 5, 9, 2, 6]
    try:
        results = list(_call(label, "map(fn, tasks)", executor.map, _executor_task, iter(tasks)))
        _expect(results == [_executor_task(t) for t in tasks], label, f"map(fn, tasks) gave {results!r}",
                "yield fn(task) for every task, in the order of the tasks")
        none = list(_call(label, "map(fn, [])", executor.map, _executor_task, []))
        _expect(none == [], label, f"map(fn, []) gave {none!r}", "yield nothing for no tasks")
    finally:
        _call(label, "close()", executor.close)


CHECKS = {
    "datasets": check_dataset,
    "masks": check_mask,
    "backbones": check_backbone,
    "ensembles": check_ensemble,
    "explainers": check_explainer,
    "seeders": check_seeder,
    "segmenters": check_segmenter,
    "acceptors": check_acceptor,
    "executors": check_executor,
}
