"""The learned GD rates: stored raw, used through softplus, converted only here.

A learned rate must stay positive while Adam moves it freely, so it is stored as a raw
value r and used as eta = softplus(r) (the reference's choice). Every other module
calls these two functions; none applies the map itself. Raw values are named
``raw_lrs``, rates ``lrs``.

Three different step sizes exist in ddcli and are named apart in code and flags:

- the learned GD rates eta_t of the inner steps (``lrs``; initial value ``step_lr``,
  ``--step-lr``);
- the meta-optimizer's step size, Adam over the synthetic set (``meta_lr``,
  ``--meta-lr``);
- the SGD rate of the train-protocol evaluation (``train_lr``, ``dd eval --train-lr``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lrs_from_raw(raw_lrs: Tensor) -> Tensor:
    """The rates eta = softplus(raw), elementwise, differentiable."""
    return F.softplus(raw_lrs)


def raw_from_lrs(lrs: float | Tensor) -> Tensor:
    """The raw value r with softplus(r) == lrs: r = log(expm1(lrs)).

    Example:
        >>> float(lrs_from_raw(raw_from_lrs(0.02)))  # doctest: +ELLIPSIS
        0.0199999...
    """
    floating = isinstance(lrs, Tensor) and lrs.is_floating_point()
    lrs = torch.as_tensor(lrs, dtype=lrs.dtype if floating else torch.get_default_dtype())
    return torch.log(torch.expm1(lrs))


def initial_raw_lrs(step_lr: float, count: int) -> Tensor:
    """``count`` raw rates that all start at exactly ``step_lr``, shape (count,)."""
    return raw_from_lrs(step_lr).repeat(count)
