"""RaT-BPTT's meta-gradient clipping: a norm cap that follows the norms seen so far.

With g_i the meta-gradient of iteration i (every learned tensor, one vector) and
e_i an exponential moving average of its norms,

    e_i = |g_i|                          at the first iteration (no average yet)
    e_i = d e_{i-1} + (1 - d) |g_i|      after
    g_i <- g_i * min(1, k e_i / (|g_i| + 1e-6))

as the published code (Feng, Vedantam & Kempe 2024) does it, k = 2 and d = 0.9 there:
the average takes the raw norm, before clipping, and this iteration's own norm is in
the cap; so the first iteration is never clipped (k >= 1) and a norm is clipped once
it passes k d e_{i-1} / (1 - k (1 - d)) (2.25 e_{i-1} for k = 2, d = 0.9). The scale is
``torch.nn.utils.clip_grad_norm_``'s (eps 1e-6, clamped at 1, so an unclipped gradient
is multiplied by exactly 1). The published code takes the norm of the images' gradient
only (its labels and rates are outside it); here it is the norm over every learned
tensor, images, rates and learned labels alike, all of which the cap then scales.

The average is a 0-dim tensor on the run's device (NaN before the first iteration), so
the clipping needs no host sync; the checkpoint stores it, and a resumed run continues
with the same cap, bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

NO_AVERAGE = float("nan")  # the average before the first iteration


def initial_average(device: torch.device | str | None = None) -> Tensor:
    return torch.tensor(NO_AVERAGE, device=device)


def clip_to_average_(grads: Sequence[Tensor], average: Tensor, *, factor: float,
                     decay: float) -> tuple[Tensor, Tensor]:
    """Clip ``grads`` in place to ``factor`` x the moving average of their global norm.

    Args:
        grads: the meta-gradient, one tensor per learned tensor (scaled in place).
        average: the moving average so far, 0-dim (NaN: none yet).
        factor: k, the cap in units of the average.
        decay: d, the average's decay per iteration.

    Returns:
        (the norm before clipping, the updated average), both 0-dim tensors.
    """
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    average = average.to(norm.dtype)
    average = torch.where(torch.isnan(average), norm, average.lerp(norm, 1 - decay))
    scale = (factor * average / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return norm, average
