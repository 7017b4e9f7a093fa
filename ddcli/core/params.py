"""Network weights as plain dicts of tensors, one net or N stacked along a new dim 0."""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from ddcli.models import init_weights

Params = dict[str, Tensor]


def leaves(params: Params) -> Params:
    """Fresh autograd leaves on the same storage (no copy), requiring grad."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def stack_params(inits: Sequence[Params], device: torch.device | str | None = None) -> Params:
    """N param dicts -> one dict of (N, *shape) tensors, detached, in the first one's order."""
    return {k: torch.stack([p[k].detach() for p in inits]).to(device) for k in inits[0]}


def unstack(stacked: Params, i: int) -> Params:
    """Net ``i`` of stacked params."""
    return {k: v[i] for k, v in stacked.items()}


def num_nets(stacked: Params) -> int:
    return next(iter(stacked.values())).shape[0]


def init_params(model: nn.Module, scheme: str, seed: int) -> Params:
    """Fresh weights for ``model``'s structure from ``seed``; ``model`` itself is untouched."""
    scratch = copy.deepcopy(model)
    init_weights(scratch, scheme, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach().clone() for k, v in scratch.named_parameters()}


def in_model_order(params: Params, model: nn.Module) -> Params:
    """``params`` re-keyed in ``model``'s parameter order: the unroll's float rounding
    depends on the order, and files (safetensors, pools) don't keep one."""
    return {name: params[name] for name, _ in model.named_parameters()}
