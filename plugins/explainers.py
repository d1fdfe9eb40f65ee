"""Saliency explainers: class-activation maps and the calibration baselines every metric is read against.

``gradcam`` is computed here, with the gradient taken only as far as the target layer (about as fast as a
plain forward pass); ``gradcam++``, ``hirescam``, ``layercam``, ``scorecam`` and ``eigencam`` are
pytorch-grad-cam's. ``random``, ``centre`` and ``oracle`` are baselines: uniform noise, a centred Gaussian
prior and the ground-truth mask itself, so a metric's chance level, centre bias and ceiling are measured
with the same code as the real explainers.

An ensemble (see ``xaibench.kit.models.EnsembleModel``) is explained through its mixed logit: gradients flow
into both members, and the gradient-based CAMs sum each member's weighted activation map before the ReLU,
so a member contributes in proportion to its share of the mixed logit (pytorch-grad-cam's default would
normalise each layer's map on its own and average them, giving both members equal say whatever alpha).
Score-CAM and Eigen-CAM keep pytorch-grad-cam's per-layer normalise-and-average: their maps are not
gradients of the mixed logit, so there is no share to preserve.

Every CAM reads a hooked activation (and its gradient) through the layout its backbone declares
(``xaibench.kit.contracts.ActivationLayout``): channels-first as it is, channels-last (timm's Swin) permuted,
tokens (ViT, DeiT, registers) with the prefix tokens dropped and the patches put back on their grid, as
pytorch-grad-cam's documented ``reshape_transform`` does. A layer whose layout is undeclared, or whose
output does not fit its declaration, is an error naming the layer, never a map.

Every explainer here explains images of any number of bands (B, C, H, W): a class-activation map is read
from the network's activations, not from the input's channels, and the baselines do not look at the
pixels. Each says so by taking the ``bands`` keyword (``xaibench.kit.contracts.Explainer``), which none of
them needs beyond that.
"""

from __future__ import annotations

import contextlib
import functools
import os
import zlib
from typing import Annotated

import numpy as np
from pydantic import Field

from xaibench.kit.contracts import ActivationLayout
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.models import layer_name, resolve_module

# -- target layers -----------------------------------------------------------------------------------


def is_ensemble(model) -> bool:
    """Whether ``model`` is an ensemble of a raw and a masked member (``xaibench.kit.models.ensemble_model``)."""
    return hasattr(model, "raw") and hasattr(model, "masked")


def explained_layers(model, target_layer: str | None, default: list) -> list:
    """The modules a CAM hooks: ``default`` when ``target_layer`` is None, else the dotted path resolved
    on each backbone network of ``model`` (``model.raw.net`` and ``model.masked.net`` for an ensemble,
    ``model.net`` for a single classifier; a module without ``.net`` is its own network)."""
    if target_layer is None:
        return list(default)
    members = [model.raw, model.masked] if is_ensemble(model) else [model]
    return [resolve_module(getattr(member, "net", member), target_layer, what="explainer parameter target_layer")
            for member in members]


def layer_layouts(model, layers, layouts) -> list[tuple[str, ActivationLayout]]:
    """Each layer's name in ``model`` and its declared ``ActivationLayout``: ``layouts(layer)`` (the
    backbone's declaration, which raises where there is none); with ``layouts`` None (a direct call outside
    a run) every layer is taken as channels-first, and ``to_channels_first`` refuses any that is not 4-D."""
    found = []
    for layer in layers:
        name = layer_name(model, layer) or type(layer).__name__
        found.append((name, ActivationLayout.channels_first() if layouts is None else layouts(layer)))
    return found


# -- Grad-CAM ------------------------------------------------------------------------------------------


class GradCam:
    """Grad-CAM (Selvaraju et al. 2017) of the target class at the target layers.

    ``explain(model, images, targets, *, target_layers) -> np.ndarray`` float32 (B, H, W) in [0, 1].
    Per layer activation A (B, C, h, w) (read through the layer's declared layout, ``layouts``) with
    gradient G of the summed target logits:
    ``cam = ReLU(sum over layers of sum_c mean_hw(G)_c * A_c)``, upsampled bilinearly
    (``align_corners=False``) to the image size on the model's device, then min-max scaled per image
    (a constant map becomes all zeros). Layers of different spatial sizes are each upsampled to the
    image before the sum. A module that runs several times in one forward pass contributes each output.

    The gradient is taken with ``torch.autograd.grad`` with respect to the hooked activations only: the
    backward pass stops at the target layer and no parameter gradient is computed or stored (parameters'
    ``requires_grad`` is left as it is), so explaining costs about one forward pass (pytorch-grad-cam
    backpropagates through the whole network, about 3x). ``target_layer``: dotted path inside the backbone network (e.g. ``"layer3"``) hooked
    instead of the backbone's default."""

    uses_ground_truth = False

    def __init__(self, *, target_layer: str | None = None):
        self.target_layer = target_layer

    def explain(self, model, images, targets, *, target_layers, masks=None, layouts=None, bands=None):
        import torch
        import torch.nn.functional as F

        layers = explained_layers(model, self.target_layer, target_layers)
        unique = list({id(layer): layer for layer in layers}.values())
        declared = dict(zip(map(id, unique), layer_layouts(model, unique, layouts)))
        activations = []  # (activation as the layer gave it, its name, its layout)

        def capture(module, inputs, output):
            name, layout = declared[id(module)]
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"gradcam needs a target layer whose output is a tensor; {name!r} gave "
                                 f"{type(output).__name__}")
            layout.to_channels_first(output, name)  # refuses an output that does not fit the declaration
            # The rest of the network gets the activations as a new graph leaf: the graph recorded before
            # the layer is freed at once, and a frozen model (no parameter requiring grad) still works.
            output = output.detach().requires_grad_()
            activations.append((output, name, layout))
            return output

        handles = [layer.register_forward_hook(capture) for layer in unique]
        try:
            with torch.enable_grad():
                logits = model(images)
                score = logits.gather(1, targets.to(logits.device).long().view(-1, 1)).sum()
                grads = torch.autograd.grad(score, [act for act, _, _ in activations], allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()

        size = tuple(images.shape[-2:])
        cams = []
        for (act, name, layout), grad in zip(activations, grads):
            if grad is not None:
                act, grad = layout.to_channels_first(act.detach(), name), layout.to_channels_first(grad, name)
                cams.append((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
        if not cams:  # the score does not depend on the target layers at all
            return np.zeros((images.shape[0], *size), dtype=np.float32)
        if len({cam.shape[-2:] for cam in cams}) > 1:
            cams = [F.interpolate(cam, size=size, mode="bilinear", align_corners=False) for cam in cams]
        cam = torch.relu(torch.stack(cams).sum(dim=0))
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
        return _unit_range(cam).cpu().numpy()


def _unit_range(maps):
    """Per-image min-max scaling of a float tensor (B, H, W) to [0, 1] float32; a constant map gives 0."""
    import torch

    maps = maps.float()
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    scaled = torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return scaled.clamp_(0.0, 1.0)


# -- pytorch-grad-cam's methods ---------------------------------------------------------------------------


def _library_cam(method: str, model, layers, layouts, *, sum_layers: bool):
    """A pytorch-grad-cam CAM object of class ``method`` on ``layers``, each layer's activations and
    gradients reshaped to (B, C, h, w) by its own ``layouts`` entry (name, ``ActivationLayout``): the
    library's ``reshape_transform``, one per layer, so an ensemble of a transformer and a CNN works.

    With ``sum_layers`` (an ensemble's two members) the per-layer maps are summed before the ReLU, and the
    sum then goes through the library's own single-layer path (ReLU, min-max scaling, cv2 resize, scaling
    again), so an ensemble whose masked member gets no gradient (α = 1) gives exactly the raw model's map.
    Maps of different sizes are resized to the image before the sum. Otherwise the library's aggregation
    (per-layer ReLU and scaling, then the mean) is kept."""
    import cv2
    import pytorch_grad_cam
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    from pytorch_grad_cam.utils.image import scale_cam_image

    base = getattr(pytorch_grad_cam, method)
    transforms = {id(layer): functools.partial(_reshaped, layout=layout, name=name)
                  for layer, (name, layout) in zip(layers, layouts)}

    class LayerwiseHooks(ActivationsAndGradients):
        """The library's hooks with the ``reshape_transform`` of the layer that gave each tensor."""

        def save_activation(self, module, input, output):
            self.activations.append(transforms[id(module)](output).cpu().detach())

        def save_gradient(self, module, input, output):
            if not getattr(output, "requires_grad", False):
                return
            transform = transforms[id(module)]

            def store(grad):  # gradients arrive in reverse order
                self.gradients = [transform(grad).cpu().detach()] + self.gradients

            output.register_hook(store)

    class Quiet(base):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.activations_and_grads.release()
            self.activations_and_grads = LayerwiseHooks(self.model, self.target_layers, None, self.detach)

        def get_cam_weights(self, *args, **kwargs):
            # Score-CAM draws a tqdm bar per image; the runner shows its own progress.
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
                return super().get_cam_weights(*args, **kwargs)

    class SummedLayers(Quiet):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            activations = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            return [self.get_cam_image(input_tensor, layer, targets, act, grad, eigen_smooth)
                    for layer, act, grad in zip(self.target_layers, activations, grads)]

        def aggregate_multi_layers(self, cam_per_target_layer):
            size = self.target_size
            if len({cam.shape[1:] for cam in cam_per_target_layer}) > 1:
                cam_per_target_layer = [np.stack([cv2.resize(np.float32(c), size) for c in cam])
                                        for cam in cam_per_target_layer]
            summed = np.maximum(np.sum(cam_per_target_layer, axis=0), 0)
            return scale_cam_image(scale_cam_image(summed, size))

        def forward(self, input_tensor, *args, **kwargs):
            self.target_size = self.get_target_width_height(input_tensor)
            return super().forward(input_tensor, *args, **kwargs)

    return (SummedLayers if sum_layers else Quiet)(model=model, target_layers=layers)


def _reshaped(tensor, *, layout: ActivationLayout, name: str):
    """A pytorch-grad-cam ``reshape_transform``: ``tensor`` in ``layout`` as (B, C, h, w)."""
    return layout.to_channels_first(tensor, name)


class _LibraryCam:
    """A pytorch-grad-cam method of the target class at the target layers.

    ``explain(model, images, targets, *, target_layers) -> np.ndarray`` float32 (B, H, W) in [0, 1] at
    the image size: for a single model exactly the library's map (per layer: ReLU, min-max scaling, cv2
    bilinear resize; then the layers' mean, scaled again); for an ensemble of two members the
    gradient-based methods sum the members' unscaled maps before one ReLU and scaling.
    ``target_layer``: dotted path inside the backbone network hooked instead of the backbone's default.
    ``layouts``: each layer's declared ``ActivationLayout``, given to the library as its
    ``reshape_transform`` (see the module docstring)."""

    uses_ground_truth = False
    method = ""
    sum_layers = True  # gradient-based: member maps are summed before the ReLU

    def __init__(self, *, target_layer: str | None = None):
        self.target_layer = target_layer

    def explain(self, model, images, targets, *, target_layers, masks=None, layouts=None, bands=None):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layers = explained_layers(model, self.target_layer, target_layers)
        declared = layer_layouts(model, layers, layouts)
        # A single model is explained exactly as pytorch-grad-cam does; only an ensemble's member maps are
        # summed before the ReLU (the module docstring says why).
        cam = _library_cam(self.method, model, layers, declared, sum_layers=self.sum_layers and is_ensemble(model))
        self._configure(cam)
        try:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            cam.activations_and_grads.release()
            model.zero_grad(set_to_none=True)  # the library's backward leaves parameter gradients behind
        return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)

    def _configure(self, cam) -> None:
        pass


class GradCamPlusPlus(_LibraryCam):
    __doc__ = "Grad-CAM++ (Chattopadhay et al. 2018), pytorch-grad-cam's.\n\n" + _LibraryCam.__doc__
    method = "GradCAMPlusPlus"


class HiResCam(_LibraryCam):
    __doc__ = "HiResCAM (Draelos & Carin 2020), pytorch-grad-cam's.\n\n" + _LibraryCam.__doc__
    method = "HiResCAM"


class LayerCam(_LibraryCam):
    __doc__ = "LayerCAM (Jiang et al. 2021), pytorch-grad-cam's.\n\n" + _LibraryCam.__doc__
    method = "LayerCAM"


class EigenCam(_LibraryCam):
    __doc__ = ("Eigen-CAM (Muhammad & Yilmaz 2020), pytorch-grad-cam's: the first principal component of the "
               "activations, class-agnostic (``targets`` are ignored).\n\n" + _LibraryCam.__doc__)
    method = "EigenCAM"
    sum_layers = False


class ScoreCam(_LibraryCam):
    __doc__ = ("Score-CAM (Wang et al. 2020), pytorch-grad-cam's: one forward pass per image and activation "
               "channel (slow: 512 passes per image at resnet18's layer4). ``batch_size``: masked images per "
               "forward pass.\n\n" + _LibraryCam.__doc__)
    method = "ScoreCAM"
    sum_layers = False

    def __init__(self, *, target_layer: str | None = None, batch_size: Annotated[int, Field(ge=1)] = 64):
        super().__init__(target_layer=target_layer)
        self.batch_size = batch_size

    def _configure(self, cam) -> None:
        cam.batch_size = self.batch_size


# -- calibration baselines -------------------------------------------------------------------------------


class RandomMap:
    """Uniform noise: the chance level of every metric.

    Returns float32 (B, H, W) with each pixel drawn uniformly from [0, 1). Each image's noise is seeded by
    ``seed`` and the image's content, so it is the same whatever the batch and position it comes in.
    Model and targets are ignored."""

    uses_ground_truth = False

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def explain(self, model, images, targets, *, target_layers, masks=None, bands=None):
        pixels = images.detach().float().cpu().numpy()
        height, width = pixels.shape[-2:]
        maps = np.empty((len(pixels), height, width), dtype=np.float32)
        for i, image in enumerate(pixels):
            rng = np.random.default_rng([self.seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
            maps[i] = rng.random((height, width), dtype=np.float32)
        return maps


class CentreMap:
    """A centred isotropic Gaussian prior: what a metric gives for "the object is in the middle".

    Returns float32 (B, H, W): ``exp(-d^2 / (2 s^2))`` with d the distance in pixels from the image centre
    ((H - 1) / 2, (W - 1) / 2) and ``s = sigma * min(H, W)``, min-max scaled to [0, 1]. The same map for
    every image; model and targets are ignored."""

    uses_ground_truth = False

    def __init__(self, *, sigma: Annotated[float, Field(gt=0.0)] = 0.25):
        self.sigma = sigma

    def explain(self, model, images, targets, *, target_layers, masks=None, bands=None):
        height, width = images.shape[-2:]
        rows = np.arange(height, dtype=np.float64)[:, None] - (height - 1) / 2
        cols = np.arange(width, dtype=np.float64)[None, :] - (width - 1) / 2
        scale = self.sigma * min(height, width)
        prior = np.exp(-(rows**2 + cols**2) / (2 * scale**2))
        span = prior.max() - prior.min()
        prior = (prior - prior.min()) / span if span > 0 else np.zeros_like(prior)
        return np.repeat(prior.astype(np.float32)[None], images.shape[0], axis=0)


class OracleMap:
    """The ground-truth mask itself: the ceiling of every metric (its Jaccard is 1 at any threshold in
    (0, 1], unless the mask covers the whole image, which min-max scaling makes a constant map).

    ``masks``: bool (B, H, W) array or tensor, given because ``uses_ground_truth`` is True; returned as
    float32 (B, H, W) of 0 and 1. Model and targets are ignored."""

    uses_ground_truth = True

    def __init__(self):
        pass

    def explain(self, model, images, targets, *, target_layers, masks=None, bands=None):
        if masks is None:
            raise ValueError("the oracle explainer needs the ground-truth masks (uses_ground_truth = True)")
        if hasattr(masks, "detach"):
            masks = masks.detach().cpu().numpy()
        masks = np.asarray(masks)
        expected = (images.shape[0], *images.shape[-2:])
        if masks.shape != expected:
            raise ValueError(f"oracle: masks of shape {masks.shape} do not match the images' {expected}")
        return masks.astype(bool).astype(np.float32)


@hookimpl
def register_explainers(register):
    register("gradcam", GradCam)
    register("gradcam++", GradCamPlusPlus)
    register("hirescam", HiResCam)
    register("layercam", LayerCam)
    register("scorecam", ScoreCam)
    register("eigencam", EigenCam)
    register("random", RandomMap)
    register("centre", CentreMap)
    register("oracle", OracleMap)
