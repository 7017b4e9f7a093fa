"""Test-set predictions of one or N stacked networks, and what is counted from them.

One routine, ``predictions``, runs inference in chunks without autograd; accuracy,
per-net correct counts and confusion matrices are all read off its output, so every
part of ddcli (periodic eval, ``dd eval``, pool evaluation, pretraining) measures the
same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ddcli.core.params import Params, num_nets, unstack

# Floats of activations one call may hold (512 MB in float32).
ACTIVATION_BUDGET = 2**27


def activation_floats(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floats of layer outputs for one input sample (sum over leaf modules)."""
    total = 0

    def hook(_module, _inputs, out):
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel()

    leaf_modules = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaf_modules]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


@torch.no_grad()
def predictions(model: nn.Module, params: Params, x: Tensor, *, stacked: bool = False,
                vmapped: bool = True, chunk: int | None = None) -> Tensor:
    """Predicted classes of ``x`` (M, C, H, W): (M,) for one net, (N, M) for stacked nets.

    Args:
        stacked: ``params`` are N nets stacked along dim 0.
        vmapped: with ``stacked``, run the N nets in one vmapped call per chunk (else
            one after another).
        chunk: images per call; default what ``ACTIVATION_BUDGET`` allows.
    """
    params = {k: v.detach() for k, v in params.items()}
    if stacked and not vmapped:
        return torch.stack([predictions(model, unstack(params, j), x, chunk=chunk)
                            for j in range(num_nets(params))])
    n = num_nets(params) if stacked else 1
    if chunk is None:
        chunk = max(1, ACTIVATION_BUDGET // (activation_floats(model, x.shape[1:]) * n))
    forward = (vmap(lambda p, xb: functional_call(model, p, (xb,)), in_dims=(0, None))
               if stacked else lambda p, xb: functional_call(model, p, (xb,)))
    out = [forward(params, x[i : i + chunk]).argmax(-1) for i in range(0, x.shape[0], chunk)]
    return torch.cat(out, dim=-1) if out else torch.zeros((n, 0) if stacked else (0,),
                                                          dtype=torch.long, device=x.device)


def correct_counts(model: nn.Module, params: Params, x: Tensor, y: Tensor, *,
                   stacked: bool = True, vmapped: bool = True,
                   chunk: int | None = None) -> Tensor:
    """Correct predictions on (x, y): (N,) int64 for stacked nets, 0-dim for one."""
    pred = predictions(model, params, x, stacked=stacked, vmapped=vmapped, chunk=chunk)
    return (pred == y).sum(-1)


def accuracy(model: nn.Module, params: Params, x: Tensor, y: Tensor, *,
             chunk: int | None = None) -> float:
    """Top-1 accuracy of one net on (x, y)."""
    return int(correct_counts(model, params, x, y, stacked=False, chunk=chunk)) / max(1, x.shape[0])


def confusion(model: nn.Module, params: Params, x: Tensor, y: Tensor, num_classes: int, *,
              chunk: int | None = None) -> Tensor:
    """(K, K) counts of one net: row = true class, column = prediction."""
    pred = predictions(model, params, x, stacked=False, chunk=chunk)
    k = num_classes
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k).cpu()
