"""Saliency explainers. ``gradcam`` is pytorch-grad-cam's Grad-CAM.

An ensemble (see ``xaibench.models.EnsembleModel``) is explained through its mixed logit: gradients flow
into both members, and each member's gradient-weighted activation map is summed before the ReLU, so a
member contributes in proportion to its share of the mixed logit (pytorch-grad-cam's default would
normalise each layer's map on its own and average them, giving both members equal say whatever alpha).
"""

from __future__ import annotations

import numpy as np

from xaibench.hookspecs import hookimpl


def _summing_gradcam(model, target_layers):
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image

    class SummedLayersGradCAM(GradCAM):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            activations = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            width, height = self.get_target_width_height(input_tensor)
            maps = []
            for layer, act, grad in zip(self.target_layers, activations, grads):
                cam = self.get_cam_image(input_tensor, layer, targets, act, grad, eigen_smooth)
                maps.append(np.stack([cv2.resize(np.float32(c), (width, height)) for c in cam]))
            return maps

        def aggregate_multi_layers(self, cam_per_target_layer):
            summed = np.maximum(np.sum(cam_per_target_layer, axis=0), 0)
            return scale_cam_image(summed)

    return SummedLayersGradCAM(model=model, target_layers=target_layers)


class GradCam:
    """Grad-CAM (Selvaraju et al.) of the target class at the backbone's target layers.

    Returns float32 (B, H, W) in [0, 1] at the input size (bilinear upsampling, per-image min-max)."""

    uses_ground_truth = False

    def __init__(self):
        pass

    def explain(self, model, images, targets, *, target_layers, masks=None):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = _summing_gradcam(model, target_layers)
        try:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        finally:
            cam.activations_and_grads.release()
        return np.clip(maps.astype(np.float32), 0.0, 1.0)


@hookimpl
def register_explainers(register):
    register("gradcam", GradCam)
