"""Replaying a distilled set: the paper's evaluation protocol, and batched test accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddcli.core.unroll import Params, unroll


def replay(
    model: nn.Module, params0: Params, images: Tensor, labels: Tensor, lrs: Tensor, *,
    trace: bool = False,
) -> tuple[Params, list[Params] | None]:
    """Train from ``params0`` with the learned steps and rates, without a meta-graph."""
    return unroll(model, params0, images, labels, lrs.detach(), create_graph=False, trace=trace)


@torch.no_grad()
def accuracy(
    model: nn.Module, params: Params, x: Tensor, y: Tensor, *, batch_size: int = 2048
) -> float:
    """Top-1 accuracy of ``model`` with weights ``params`` on (x, y), batched, no autograd."""
    params = {k: v.detach() for k, v in params.items()}
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = functional_call(model, params, (x[start : start + batch_size],))
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum().item()
    return correct / max(1, x.shape[0])


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, params: Params, x: Tensor, y: Tensor, *, batch_size: int = 2048
) -> tuple[float, float]:
    params = {k: v.detach() for k, v in params.items()}
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        logits = functional_call(model, params, (x[start : start + batch_size],))
        yy = y[start : start + batch_size]
        total_loss += F.cross_entropy(logits, yy, reduction="sum").item()
        correct += (logits.argmax(1) == yy).sum().item()
    n = max(1, x.shape[0])
    return total_loss / n, correct / n
