"""The tiny inputs the checks feed components: 2 images of 32×40 pixels with foregrounds, a uint8 image
with an object, smooth and peaked saliency maps, ``tiny_classifier``, the model explainers are checked
on, and the band sets components that take ``bands`` are checked with (RGB, and four bands whose
composite is not the first three)."""

from __future__ import annotations

import numpy as np

from xaibench.kit.contracts import Bands

HEIGHT, WIDTH = 32, 40  # not square, so swapped axes show
# What a run gives components that take bands: the dataset's bands with their statistics filled in
RGB_BANDS = Bands(("red", "green", "blue"), mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29), median=(0.5, 0.5, 0.5))
FOUR_BANDS = Bands(("nir", "red", "green", "blue"), (1, 2, 3), mean=(0.6, 0.5, 0.5, 0.5), std=(0.2, 0.29, 0.29, 0.29),
                   median=(0.62, 0.5, 0.5, 0.5))


def _image_batch(seed: int = 0, channels: int = 3):
    """float32 (2, channels, H, W) in [0, 1] and bool foreground (2, 1, H, W) with both values in each image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, channels, HEIGHT, WIDTH, generator=generator)
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


def tiny_classifier(num_classes: int = 2, seed: int = 0, channels: int = 3):
    """A two-convolution CNN (eval mode): float (B, channels, H, W) in [0, 1] → logits (B, num_classes).

    Its CAM target layer is ``model.features`` (output (B, 16, H/2, W/2))."""
    import torch
    from torch import nn

    class TinyClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

        def forward(self, images):
            return self.head(self.features(images))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyClassifier().eval()
