"""Real-data batches for the outer loss: epoch-wise shuffles, one batch per class, and
batch augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddcli.core.seeds import derive_seed
from ddcli.errors import ConfigError


class BatchSampler:
    """Batch ``i`` of a run is a pure function of (seed, i): resume needs no sampler state.

    Each real-data epoch is one permutation seeded by (seed, epoch); batches are
    consecutive slices of it, and the incomplete tail is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.batch_size = min(batch_size, n)
        self.iterations_per_epoch = max(1, n // self.batch_size)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, iteration: int) -> Tensor:
        epoch, i = divmod(iteration, self.iterations_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed + 1_000_003 * epoch) % (1 << 63))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


class ClassBatchSampler:
    """A real batch of every class at each iteration (distribution matching).

    Each class walks its own epoch-wise shuffles (a ``BatchSampler`` over its images,
    seeded by (seed, class)), so batch ``i`` is again a pure function of (seed, i).
    """

    def __init__(self, labels: Tensor, num_classes: int, batch_size: int, seed: int) -> None:
        self.members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
        empty = [c for c, m in enumerate(self.members) if m.numel() == 0]
        if empty:
            raise ConfigError(f"class {empty[0]} has no training images; distribution "
                              "matching needs real images of every class")
        self.samplers = [BatchSampler(m.numel(), batch_size, derive_seed(seed, "class", c))
                         for c, m in enumerate(self.members)]
        self.iterations_per_epoch = min(s.iterations_per_epoch for s in self.samplers)

    def indices(self, iteration: int) -> list[Tensor]:
        """Indices into the training set, one tensor per class."""
        return [m[s.indices(iteration)] for m, s in zip(self.members, self.samplers)]


def augment_batch(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Reflect-pad, random crop back to size, random horizontal flip; (B, C, H, W).

    Done as one gather on the whole batch rather than a Python loop over images.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]
