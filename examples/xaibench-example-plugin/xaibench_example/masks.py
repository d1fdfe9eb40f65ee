"""The ``checkerboard`` mask: the background replaced by a checkerboard of two colours."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class CheckerboardMask:
    """Background replaced by a checkerboard of ``square``-pixel squares in ``light`` and ``dark`` (RGB in
    [0, 1]), anchored at the top-left pixel, which is ``light``.

    ``__call__(images, foreground) -> images``: ``images`` float tensor (B, 3, H, W) in [0, 1];
    ``foreground`` bool tensor (B, 1, H, W). Returns a new tensor of the images' shape, dtype and device,
    equal to ``images`` where ``foreground`` is True and to the pattern elsewhere."""

    def __init__(
        self,
        *,
        square: Annotated[int, Field(ge=1)] = 8,
        light: tuple[Unit, Unit, Unit] = (1.0, 1.0, 1.0),
        dark: tuple[Unit, Unit, Unit] = (0.0, 0.0, 0.0),
    ):
        self.square = square
        self.light = tuple(light)
        self.dark = tuple(dark)

    def __call__(self, images, foreground):
        import torch

        if foreground.dtype != torch.bool:
            raise TypeError(f"foreground must be a bool tensor, got {foreground.dtype}")
        height, width = images.shape[-2:]
        rows = torch.arange(height, device=images.device) // self.square
        cols = torch.arange(width, device=images.device) // self.square
        odd = ((rows[:, None] + cols[None, :]) % 2).bool()  # (H, W): True on the dark squares
        light = torch.tensor(self.light, dtype=images.dtype, device=images.device).view(3, 1, 1)
        dark = torch.tensor(self.dark, dtype=images.dtype, device=images.device).view(3, 1, 1)
        pattern = torch.where(odd, dark, light)  # (3, H, W), broadcast over the batch
        return torch.where(foreground, images, pattern)
