"""Differentiable Siamese Augmentation's ops (Zhao & Bilen 2021), seeded per call.

``DSA()(x, seed)`` transforms a batch of normalised images (B, C, H, W), or (N, B, C,
H, W) for N stacked nets, with one op family drawn per call (DSA's default "S" mode:
one of color, crop, cutout, flip, scale, rotate) and per-image random strengths. Every
op is an ordinary tensor operation (arithmetic, a gather, a mask, ``affine_grid`` +
``grid_sample``), so gradients flow to the pixels; all randomness comes from a
``torch.Generator`` seeded with ``seed``, so the same seed re-applies exactly the same
transforms (the ``recompute`` memory mode rebuilds a step this way).

``siamese=True`` is DSA's Siamese mode (what its ``DiffAugment`` does when given a seed):
one draw of every strength for the whole batch, so two batches of any sizes given the
same seed get the same transform. Distribution matching augments a class's real and
synthetic images this way (``ddcli.core.distribution``).

The strengths are DSA's, as DD-Ranking configures them: flip p = 0.5, rotate +-15
degrees, saturation 2, brightness 1, contrast 0.5, scale 1.2, crop 0.125, cutout 0.5.

Why not ``kornia.augmentation``: its ops parametrise colour and translation
differently from DSA, its parameters come from the global RNG, and on the small
inner batches here its per-call cost is 2-7x these ops' (docs/methods.md has the
measurement, ``bench/augment_speed.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSA:
    """DSA's augmentation; ``families`` is its strategy, split on "_"."""

    families: tuple[str, ...] = FAMILIES
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    siamese: bool = False

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        if x.dim() == 5:  # (N, B, C, H, W): every image of every net drawn apart
            return self(x.flatten(0, 1), seed).view_as(x)
        g = torch.Generator().manual_seed(seed)
        family = self.families[int(torch.randint(len(self.families), (1,), generator=g))]
        return getattr(self, f"_{family}")(x, g)

    # Each op: x (B, C, H, W) -> same shape; randomness from g only, one draw per image
    # (b = B) or one for the batch (b = 1, Siamese), broadcast over it.
    def _draws(self, x: Tensor) -> int:
        return 1 if self.siamese else x.shape[0]

    def _rand(self, g: torch.Generator, x: Tensor, *shape: int) -> Tensor:
        return torch.rand(shape, generator=g).to(device=x.device, dtype=x.dtype)

    def _color(self, x: Tensor, g: torch.Generator) -> Tensor:
        b = self._draws(x)
        x = x + (self._rand(g, x, b, 1, 1, 1) - 0.5) * self.brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (self._rand(g, x, b, 1, 1, 1) * self.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (self._rand(g, x, b, 1, 1, 1) + self.contrast) + mean

    def _flip(self, x: Tensor, g: torch.Generator) -> Tensor:
        flip = self._rand(g, x, self._draws(x), 1, 1, 1) < self.prob_flip
        return torch.where(flip, x.flip(3), x)

    def _affine(self, x: Tensor, theta: Tensor) -> Tensor:
        theta = theta.expand(x.shape[0], 2, 3)  # Siamese: one theta for every image
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, r = self._draws(x), self.ratio_scale
        sx = self._rand(g, x, b) * (r - 1 / r) + 1 / r
        sy = self._rand(g, x, b) * (r - 1 / r) + 1 / r
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
        return self._affine(x, theta)  # theta (B, 2, 3)

    def _rotate(self, x: Tensor, g: torch.Generator) -> Tensor:
        angle = (self._rand(g, x, self._draws(x)) - 0.5) * 2 * self.ratio_rotate / 180 * math.pi
        cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
        return self._affine(x, theta)

    def _crop(self, x: Tensor, g: torch.Generator) -> Tensor:
        """Translate by up to ``ratio_crop_pad`` of the size, filling with zeros."""
        b, _, h, w = x.shape
        sh, sw = int(h * self.ratio_crop_pad + 0.5), int(w * self.ratio_crop_pad + 0.5)
        n = self._draws(x)
        ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=g).to(x.device)
        tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=g).to(x.device)
        bi, yi, xi = torch.meshgrid(torch.arange(b, device=x.device),
                                    torch.arange(h, device=x.device),
                                    torch.arange(w, device=x.device), indexing="ij")
        yi = torch.clamp(yi + ty + 1, 0, h + 1)
        xi = torch.clamp(xi + tx + 1, 0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
        return padded[bi, yi, xi].permute(0, 3, 1, 2)

    def _cutout(self, x: Tensor, g: torch.Generator) -> Tensor:
        """Zero a square of ``ratio_cutout`` of the size at a random place."""
        _, _, h, w = x.shape
        ch, cw = int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)
        n = self._draws(x)
        oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g).to(x.device)
        ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g).to(x.device)
        # Rows oy - ch//2 .. oy - ch//2 + ch - 1 (clipped to the image), likewise columns.
        ry = torch.arange(h, device=x.device)[None, :, None] - oy + ch // 2  # (B, H, 1)
        rx = torch.arange(w, device=x.device)[None, None, :] - ox + cw // 2  # (B, 1, W)
        inside = (ry >= 0) & (ry < ch) & (rx >= 0) & (rx < cw)  # (B, H, W)
        return x * (~inside).unsqueeze(1).to(x.dtype)


def parse_augment(name: str):
    """``"dsa"`` -> DSA with every family; ``"dsa:flip_rotate"`` -> those families only;
    ``"dc"`` / ``"dc:crop_rotate"`` -> DC's evaluation augmentation (``DCAugment``,
    evaluation only); ``"none"`` -> None."""
    if name in ("none", "", None):
        return None
    if name == "dc" or name.startswith("dc:"):
        from ddcli.core.dc_augment import parse_dc
        return parse_dc(name)
    if name == "dsa":
        return DSA()
    if name.startswith("dsa:"):
        families = tuple(name[4:].split("_"))
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(f"unknown DSA op families {unknown}; choose from {', '.join(FAMILIES)}")
        return DSA(families=families)
    raise ValueError(f"unknown augmentation {name!r}")
