"""DC's evaluation augmentation (Zhao, Mopuri & Bilen 2021), seeded per call.

DC's evaluation (``get_daparam`` in its code) augments MNIST only, with the strategy
``crop_scale_rotate``: every image of a training batch gets ONE of the listed ops, drawn
uniformly, with its own random strength:

- crop: pad 4 px with the batch's per-channel mean, take a 28 px window at a random
  offset in ``0 .. 2*crop - 1`` (a shift of -4 .. +3 px);
- scale: resize to ``int(u * H)`` x ``int(v * H)`` px, u, v ~ U(1 - 0.2, 1 + 0.2), with
  nearest-neighbour interpolation (``F.interpolate``'s default), centred on a zero canvas,
  then centre-cropped back to H x W;
- rotate: an integer angle in ``-45 .. 44`` degrees, cubic-spline rotation that grows the
  canvas (``scipy.ndimage.rotate``'s defaults) filled with the mean of the channel means,
  then centre-cropped back.

DC draws from numpy's global RNG; here every draw comes from a ``numpy`` generator seeded
with ``seed``, so a net trains the same alone or stacked. Evaluation only: nothing here
is differentiated (the rotation runs in scipy), unlike ``ddcli.core.augment.DSA``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import rotate as nd_rotate
from torch import Tensor

DC_OPS = ("crop", "scale", "rotate")


@dataclass(frozen=True)
class DCDraws:
    """Per-image random parameters of one call (B images)."""

    op: np.ndarray  # (B,) index into the strategy's ops
    crop: np.ndarray  # (B, 2) window offsets (rows, cols) in the padded image
    scale: np.ndarray  # (B, 2) scaled height and width in px
    angle: np.ndarray  # (B,) integer degrees


@dataclass(frozen=True)
class DCAugment:
    """DC's ``augment``; ``ops`` is its strategy split on "_" (MNIST: crop, scale, rotate)."""

    ops: tuple[str, ...] = DC_OPS
    crop: int = 4
    scale: float = 0.2
    rotate: int = 45

    def draw(self, b: int, size: int, seed: int) -> DCDraws:
        g = np.random.default_rng(seed)
        op = g.integers(len(self.ops), size=b)
        crop = g.integers(2 * self.crop, size=(b, 2))
        scale = (g.uniform(1 - self.scale, 1 + self.scale, size=(b, 2)) * size).astype(np.int64)
        angle = g.integers(-self.rotate, self.rotate, size=b)
        return DCDraws(op, crop, scale, angle)

    def __call__(self, x: Tensor, seed: int) -> Tensor:
        if x.dim() == 5:  # (N, B, C, H, W): every image of every net drawn apart
            return self(x.flatten(0, 1), seed).view_as(x)
        return self.apply(x, self.draw(x.shape[0], x.shape[2], seed))

    def apply(self, x: Tensor, d: DCDraws) -> Tensor:
        """x (B, C, H, W) -> the same shape, image i transformed by its op in ``d``."""
        x = x.detach()
        mean = x.mean(dim=(0, 2, 3))  # (C,): the batch's channel means, as DC pads
        out = x.clone()
        for name, fn in (("crop", self._crop), ("scale", self._scale), ("rotate", self._rotate)):
            if name not in self.ops:
                continue
            idx = np.flatnonzero(d.op == self.ops.index(name))
            if idx.size:
                sel = torch.as_tensor(idx, device=x.device)
                out[sel] = fn(x[sel], d, idx, mean)
        return out

    def _crop(self, x: Tensor, d: DCDraws, idx: np.ndarray, mean: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.crop
        padded = mean.view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        off = torch.as_tensor(d.crop[idx], device=x.device)  # (b, 2)
        rows = off[:, 0, None] + torch.arange(h, device=x.device)  # (b, h)
        cols = off[:, 1, None] + torch.arange(w, device=x.device)  # (b, w)
        bi = torch.arange(b, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _scale(self, x: Tensor, d: DCDraws, idx: np.ndarray, mean: Tensor) -> Tensor:
        """Nearest-neighbour resize onto a centred zero canvas, centre-cropped: one gather.

        Output pixel i sits at canvas row i + (m - H) // 2, i.e. row i + (m - H) // 2 -
        (m - h) // 2 of the resized image, which reads source row floor(that * H / h)
        (float32, as ``F.interpolate(mode="nearest")`` computes it), or zero outside it.
        """
        b, c, h, w = x.shape
        out = torch.empty_like(x)
        for k, i in enumerate(idx):
            sh, sw = (int(v) for v in d.scale[i])
            m = max(sh, sw, h, w)
            rows = self._source(h, sh, (m - h) // 2 - (m - sh) // 2, x.device)
            cols = self._source(w, sw, (m - w) // 2 - (m - sw) // 2, x.device)
            valid = (rows >= 0)[:, None] & (cols >= 0)[None, :]  # (h, w)
            img = x[k][:, rows.clamp(min=0)][:, :, cols.clamp(min=0)]
            out[k] = torch.where(valid, img, torch.zeros((), dtype=x.dtype, device=x.device))
        return out

    @staticmethod
    def _source(size: int, scaled: int, shift: int, device) -> Tensor:
        pos = torch.arange(size, device=device) + shift  # row in the resized image
        ratio = torch.tensor(size, dtype=torch.float32) / scaled
        src = torch.floor(pos.clamp(min=0).float() * ratio).long().clamp(max=size - 1)
        return torch.where((pos >= 0) & (pos < scaled), src, torch.full_like(src, -1))

    def _rotate(self, x: Tensor, d: DCDraws, idx: np.ndarray, mean: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        fill = float(np.mean([float(m) for m in mean]))
        out = []
        for k, i in enumerate(idx):
            r = nd_rotate(x[k].cpu().numpy(), angle=int(d.angle[i]), axes=(-2, -1), cval=fill)
            top, left = (r.shape[-2] - h) // 2, (r.shape[-1] - w) // 2
            out.append(torch.from_numpy(np.ascontiguousarray(r[:, top:top + h, left:left + w])))
        return torch.stack(out).to(device=x.device, dtype=x.dtype)


def parse_dc(name: str) -> DCAugment:
    """``"dc"`` -> DC's MNIST strategy (crop, scale, rotate); ``"dc:crop_rotate"`` -> those."""
    if name == "dc":
        return DCAugment()
    ops = tuple(name[3:].split("_"))
    unknown = [o for o in ops if o not in DC_OPS]
    if unknown or not ops:
        raise ValueError(f"unknown DC ops {unknown}; choose from {', '.join(DC_OPS)}")
    return DCAugment(ops=ops)
