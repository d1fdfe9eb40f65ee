"""Background masks (paper Fig. 1): keep the annotated foreground, replace everything else.

Each mask is batched on tensors: ``mask(images, foreground, bands=bands)`` with images float (B, C, H, W)
in [0, 1], one channel per band of the dataset's ``bands`` (``xaibench.kit.contracts.Bands``; RGB where
not given), and foreground bool (B, 1, H, W); the result is a new tensor, equal to ``images`` on the
foreground. Every mask works band by band: ``white`` and ``black`` fill each band with 1 or 0, ``blur``
blurs each band, and ``median`` fills the colour composite's bands with ImageNet's (or a given) colour
and every other band (near-infrared, say) with the dataset's median of that band over its training
images.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from xaibench.kit.contracts import Bands
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


def _bands(images, bands) -> Bands:
    """``bands``, or RGB's where not given; their count must be the images' channels."""
    bands = bands if bands is not None else Bands.rgb3()
    if images.shape[1] != bands.count:
        raise ValueError(f"images have {images.shape[1]} channels but the bands are {bands.describe()}")
    return bands


class SolidMask:
    """Fills every band of the background with one value in [0, 1]."""

    value: float = 0.0

    def __call__(self, images, foreground, *, bands=None):
        _bands(images, bands)
        return _composite(images, foreground, images.new_full((1, images.shape[1], 1, 1), self.value))


class WhiteMask(SolidMask):
    """Background set to white: 1 in every band."""

    value = 1.0


class BlackMask(SolidMask):
    """Background set to black: 0 in every band."""

    value = 0.0


class MedianMask:
    """Background set to the colour the pretrained network was normalised by, band by band.

    The colour composite's red, green and blue bands get ``colour`` (a band shown as several of them, as a
    grey one is, their mean, as the backbones normalise it), by default torchvision's ImageNet
    channel statistics (0.485, 0.456, 0.406), which map to a zero input after normalisation (pass the
    dataset's own median colour to use that instead). Every other band, which ImageNet has no statistics
    for, gets the dataset's median of that band over its training images (``bands.median``)."""

    def __init__(self, *, colour: tuple[Unit, Unit, Unit] = IMAGENET_COLOUR):
        self.colour = tuple(colour)

    def fill(self, bands: Bands) -> list[float]:
        """The value each band of the background gets."""
        values = [None] * bands.count
        for position in bands.others:
            if bands.median is None:
                raise ValueError(f"the median mask needs the dataset's per-band median for the bands outside the "
                                 f"colour composite ({', '.join(bands.names[i] for i in bands.others)}); none was given")
            values[position] = bands.median[position]
        for position in set(bands.rgb):  # a band shown in several channels (grey) gets their mean colour
            channels = [channel for channel, shown in enumerate(bands.rgb) if shown == position]
            values[position] = sum(self.colour[channel] for channel in channels) / len(channels)
        return values

    def __call__(self, images, foreground, *, bands=None):
        import torch

        fill = self.fill(_bands(images, bands))
        background = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, len(fill), 1, 1)
        return _composite(images, foreground, background)


class BlurMask:
    """Background replaced by a Gaussian blur of the image itself (sigma in pixels).

    The kernel spans ±3 sigma, clipped to the image size; borders are reflected."""

    def __init__(self, *, sigma: Annotated[float, Field(gt=0)] = 4.0):
        self.sigma = sigma

    def __call__(self, images, foreground, *, bands=None):
        from torchvision.transforms.functional import gaussian_blur

        _bands(images, bands)
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
