"""Normalised tensors to pixels: the one place where the bundle's mean/std are undone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x01 - mean) / std`` per channel; the result is not clipped.

    Args:
        images: normalised images, shape (..., C, H, W).
        mean: per-channel mean in [0, 1] pixel units, length C.
        std: per-channel standard deviation, length C.

    Returns:
        Float images in [0, 1] pixel units (values outside it are kept), same shape.
    """
    c = images.shape[-3]
    m = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)  # (C, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
    return images.detach().float().cpu() * s + m


def to_uint8(x01: Tensor) -> tuple[Tensor, int]:
    """Round [0, 1] images to uint8 pixel values and count the values clipped to [0, 255].

    Rounding is ``torch.round(x * 255)`` (half to even); a value counts as clipped when
    it still falls outside [0, 255] after rounding.
    """
    v = torch.round(x01.float() * 255)
    clipped = int(((v < 0) | (v > 255)).sum())
    return v.clamp_(0, 255).to(torch.uint8), clipped
