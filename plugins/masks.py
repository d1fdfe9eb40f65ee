"""Background masks (paper Fig. 1): keep the annotated foreground, replace everything else.

Each mask is batched on tensors: ``mask(images, foreground)`` with images float (B, 3, H, W) in [0, 1]
and foreground bool (B, 1, H, W); the result is a new tensor, equal to ``images`` on the foreground.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from xaibench.kit.hookspecs import hookimpl

# torchvision's ImageNet normalisation constants: the colour a pretrained network sees as zero input.
IMAGENET_COLOUR = (0.485, 0.456, 0.406)

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


def _composite(images, foreground, background):
    if str(foreground.dtype) != "torch.bool":
        raise TypeError(f"foreground must be a bool tensor, got {foreground.dtype}")
    if foreground.shape[0] != images.shape[0] or foreground.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"foreground {tuple(foreground.shape)} does not match images {tuple(images.shape)}")
    import torch

    return torch.where(foreground, images, background)


class SolidMask:
    """Fills the background with one RGB colour (components in [0, 1])."""

    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __call__(self, images, foreground):
        import torch

        fill = torch.tensor(self.colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return _composite(images, foreground, fill)


class WhiteMask(SolidMask):
    """Background set to white (1, 1, 1)."""

    colour = (1.0, 1.0, 1.0)


class BlackMask(SolidMask):
    """Background set to black (0, 0, 0)."""

    colour = (0.0, 0.0, 0.0)


class MedianMask(SolidMask):
    """Background set to the ImageNet per-channel colour the pretrained network was normalised by.

    ``colour`` defaults to torchvision's ImageNet channel statistics (0.485, 0.456, 0.406), which map to
    a zero input after normalisation; pass the dataset's own per-channel median to use that instead."""

    def __init__(self, *, colour: tuple[Unit, Unit, Unit] = IMAGENET_COLOUR):
        self.colour = tuple(colour)


class BlurMask:
    """Background replaced by a Gaussian blur of the image itself (sigma in pixels).

    The kernel spans ±3 sigma, clipped to the image size; borders are reflected."""

    def __init__(self, *, sigma: Annotated[float, Field(gt=0)] = 4.0):
        self.sigma = sigma

    def __call__(self, images, foreground):
        from torchvision.transforms.functional import gaussian_blur

        size = 2 * math.ceil(3 * self.sigma) + 1
        limit = min(images.shape[-2:])
        size = min(size, limit if limit % 2 else limit - 1)
        blurred = gaussian_blur(images, kernel_size=[size, size], sigma=[self.sigma, self.sigma])
        return _composite(images, foreground, blurred)


@hookimpl
def register_masks(register):
    register("white", WhiteMask)
    register("black", BlackMask)
    register("median", MedianMask)
    register("blur", BlurMask)
