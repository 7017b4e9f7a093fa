"""The meta-gradient over the networks of one outer iteration, batched when it can be.

Random and pretrained-random init average the meta-gradient over ``sample_n_nets``
networks. Rather than unrolling them one after another, their weights are stacked
along a new leading dimension, ``(N, *shape)`` for every parameter, and one unroll of
the batched step map (``StepFn(batched=True)``) moves all N at once:

    g_t^(i)         = torch.func.grad(inner CE)(theta_t^(i), x_t, y_t)    vmapped over i
    theta_{t+1}^(i) = rule(theta_t^(i), g_t^(i), eta_t)
    L               = sum_i CE(f(x_real; theta_N^(i)), y_real)

``torch.func.grad`` computes each inner gradient as a differentiable function, so
ordinary autograd (the outer level) still sees the whole computation and
``differentiate_unroll`` takes the meta-gradient with respect to the shared synthetic
set exactly as for one network, in any memory mode.

The outer loss L is vmapped over i too, except on the CPU, where it goes net by net
(``looped_outer``): oneDNN runs the grouped conv that vmap makes of N nets' second conv
on the shared 1024-image batch slower than N plain ones, and a loop keeps only one
real-batch graph alive at a time.

The sum over networks is returned; the caller divides by the global number of networks
(several processes each hold some of them). A model vmap can't run (data-dependent
control flow, ``.item()`` in ``forward``) falls back to a loop over networks, once and
for the rest of the run, with a warning.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ddcli.core.params import Params, stack_params
from ddcli.core.schedules import Schedule
from ddcli.core.steps import StepFn
from ddcli.core.unroll import MetaGradient, adjoint_of, differentiate_unroll

OuterLoss = Callable[[nn.Module, Params, Tensor, Tensor], Tensor]


def outer_loss(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the final weights on a real batch (hard labels)."""
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def looped_outer(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor):
    """The outer loss and a_N of N stacked nets, one net at a time."""

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        total = torch.zeros((), dtype=real_x.dtype, device=real_x.device)
        adjoint = {k: torch.empty_like(v) for k, v in final.items()}
        for i in range(next(iter(final.values())).shape[0]):
            net = {k: v[i].detach().requires_grad_(True) for k, v in final.items()}
            value = loss_fn(model, net, real_x, real_y)
            for k, g in zip(net, torch.autograd.grad(value, tuple(net.values()))):
                adjoint[k][i] = g
            total += value.detach()
        return total, tuple(adjoint.values())

    return outer


def batched_outer(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor):
    if real_x.device.type == "cpu":
        return looped_outer(model, loss_fn, real_x, real_y)
    per_net = vmap(lambda params: loss_fn(model, params, real_x, real_y))
    return adjoint_of(lambda params: per_net(params).sum())


def _add(total: MetaGradient | None, part: MetaGradient) -> MetaGradient:
    if total is None:
        return part
    return MetaGradient(total.loss + part.loss,
                        {k: total.grads[k] + g for k, g in part.grads.items()})


class NetsMetaGradient:
    """The engine's meta-gradient summed over a list of networks.

    Args:
        step: the step map of one network (its rule is the inner optimiser).
        mode: the unroll memory mode.
        batch: evaluate several networks together (``--batch-nets``); False loops.
        inner_threads: CPU threads for one network's unroll (see
            ``differentiate_unroll``); a batched unroll uses torch's setting.
        loss_fn: the outer objective given the final weights (attack relabels inside).
    """

    def __init__(self, step: StepFn, *, mode: str, batch: bool = True,
                 inner_threads: int | None = None, loss_fn: OuterLoss = outer_loss) -> None:
        self.step, self.mode, self.batch = step, mode, batch
        self.inner_threads, self.loss_fn = inner_threads, loss_fn
        self.fallback_reason: str | None = None

    @property
    def batched(self) -> bool:
        return self.batch and self.fallback_reason is None

    def __call__(self, inits: list[Params], learned: dict[str, Tensor], real_x: Tensor,
                 real_y: Tensor, *, labels: Tensor | None = None,
                 schedule: Schedule | None = None,
                 window: tuple[int, int] | None = None) -> MetaGradient:
        model = self.step.model
        common = dict(labels=labels, schedule=schedule, mode=self.mode, window=window)
        if len(inits) > 1 and self.batched:
            try:
                # N nets make every op N times larger: worth all the threads (measured
                # 0.68 against 1.02 s/iter for 8 LeNets on 2 cores with one).
                outer = batched_outer(model, self.loss_fn, real_x, real_y)
                return differentiate_unroll(self.step.batched_like(), outer,
                                            stack_params(inits), learned, **common)
            except (RuntimeError, NotImplementedError) as exc:
                # Nothing was changed (all of it is pure functions): loop from here on.
                self.fallback_reason = str(exc).strip().splitlines()[0][:200]
                warnings.warn(
                    f"this model can't be evaluated for several networks at once with "
                    f"torch.func.vmap ({self.fallback_reason}); looping over them instead",
                    RuntimeWarning, stacklevel=2,
                )
        total = None
        outer = adjoint_of(lambda params: self.loss_fn(model, params, real_x, real_y))
        for params0 in inits:
            part = differentiate_unroll(self.step, outer, params0, learned,
                                        inner_threads=self.inner_threads, **common)
            total = _add(total, part)
        return total


def meta_gradient(
    model: nn.Module, params0: Params, images: Tensor, labels: Tensor, raw_lrs: Tensor,
    real_x: Tensor, real_y: Tensor, *, mode: str = "full", loss_fn: OuterLoss = outer_loss,
    inner_threads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's meta-gradient for one net: plain GD on the ordered steps, fixed labels.

    Returns:
        (loss, d loss / d images, d loss / d raw_lrs), all detached.

    Example:
        >>> loss, g_img, g_lr = meta_gradient(model, params, images, labels, raw_lrs,
        ...                                   x, y)  # doctest: +SKIP
    """
    outer = adjoint_of(lambda params: loss_fn(model, params, real_x, real_y))
    out = differentiate_unroll(StepFn(model), outer, params0,
                               {"images": images, "raw_lrs": raw_lrs}, labels=labels,
                               mode=mode, inner_threads=inner_threads)
    return out.loss, out.grads["images"], out.grads["raw_lrs"]
