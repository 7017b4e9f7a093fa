"""Several sampled networks per outer iteration, evaluated together.

Random and pretrained-random init average the meta-gradient over ``sample_n_nets``
networks. Rather than unrolling them one after another, their weights are stacked
along a new leading dimension, ``(N, *shape)`` for every parameter, and one unroll
moves all N at once:

    g_t^(i)         = torch.func.grad(inner CE)(theta_t^(i), x_s, y_s)    vmapped over i
    theta_{t+1}^(i) = theta_t^(i) - eta_t * g_t^(i)
    L               = sum_i CE(f(x_real; theta_T^(i)), y_real)

The outer loss L is vmapped over i too, except on the CPU, where it goes net by net
(``_looped_outer``: faster there, and only one real-batch graph alive at a time).

``torch.func.grad`` computes each inner gradient as a differentiable function, so
ordinary autograd (the outer level) still sees the whole computation and
``ddcli.core.unroll.differentiate_unroll`` takes the meta-gradient with respect to the shared
images and rates exactly as for one network, in any memory mode. Under vmap a layer
whose weights differ per network but whose input is shared becomes one wider layer
(conv1 of N LeNets is one conv with 6N filters), and the others grouped/batched
convolutions and matmuls.

The sum over networks is returned; the caller divides by the global number of networks
(several processes each hold some of them). A model vmap can't run (data-dependent
control flow, ``.item()`` in ``forward``) falls back to a Python loop over networks, once
and for the rest of the run, with a warning.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddcli.core.unroll import Params, adjoint_of, differentiate_unroll, meta_gradient, outer_loss

OuterLoss = Callable[[nn.Module, Params, Tensor, Tensor], Tensor]


def stack_params(inits: list[Params]) -> Params:
    """Stack N networks' weights by name: each parameter becomes (N, *shape)."""
    return {name: torch.stack([p[name] for p in inits]) for name in inits[0]}


def batched_step(model: nn.Module):
    """The GD step map of N stacked networks on shared synthetic images."""

    def inner_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    grads_of = vmap(grad(inner_loss), in_dims=(0, None, None))

    def step(params: Params, x: Tensor, y: Tensor, lr: Tensor, *, create_graph: bool) -> Params:
        # torch.func.grad ignores an enclosing no_grad for its own gradient, so this only
        # stops the outer level from recording a graph that nobody will use.
        with contextlib.nullcontext() if create_graph else torch.no_grad():
            grads = grads_of(params, x, y)
            return {name: p - lr * grads[name] for name, p in params.items()}

    return step


def batched_meta_gradient(
    model: nn.Module, inits: list[Params], images: Tensor, labels: Tensor, raw_lrs: Tensor,
    real_x: Tensor, real_y: Tensor, *, mode: str = "full", loss_fn: OuterLoss = outer_loss,
    inner_threads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum over ``inits`` of ``meta_gradient``'s (loss, d/d images, d/d raw rates), batched.

    Example:
        >>> loss, g_img, g_lr = batched_meta_gradient(model, [p1, p2], images, labels,
        ...                                           raw_lrs, x, y)  # doctest: +SKIP
    """
    if real_x.device.type == "cpu":
        outer = _looped_outer(model, loss_fn, real_x, real_y)
    else:
        per_net = vmap(lambda params: loss_fn(model, params, real_x, real_y))
        outer = adjoint_of(lambda params: per_net(params).sum())
    return differentiate_unroll(batched_step(model), outer, stack_params(inits), images, labels,
                                raw_lrs, mode=mode, inner_threads=inner_threads)


def _looped_outer(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor):
    """The outer loss and a_T of N stacked nets, one net at a time.

    Used on the CPU: vmap would turn the second conv of N nets on the shared real batch
    into one grouped conv, which oneDNN runs 1.8x slower than N plain ones at batch 1024,
    and it would keep all N graphs of the real batch alive at once (80 MB each for LeNet
    at batch 1024); here only one is. The inner steps, on a few images each, are where
    batching pays.
    """

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


def looped_meta_gradient(
    model: nn.Module, inits: list[Params], images: Tensor, labels: Tensor, raw_lrs: Tensor,
    real_x: Tensor, real_y: Tensor, *, mode: str = "full", loss_fn: OuterLoss = outer_loss,
    inner_threads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The same sum, one network at a time (the fallback, and the reference in tests)."""
    total = torch.zeros((), dtype=images.dtype, device=images.device)
    g_img, g_lr = torch.zeros_like(images), torch.zeros_like(raw_lrs)
    for params0 in inits:
        loss, gi, gl = meta_gradient(model, params0, images, labels, raw_lrs, real_x, real_y,
                                     mode=mode, loss_fn=loss_fn, inner_threads=inner_threads)
        total += loss
        g_img += gi
        g_lr += gl
    return total, g_img, g_lr


class NetsMetaGradient:
    """The engine's meta-gradient over a list of networks: batched when it can be.

    Args:
        model: the network structure.
        mode: the unroll memory mode.
        batch: evaluate several networks together (``--batch-nets``); False loops.
        inner_threads: CPU threads for one network's unroll (see ``meta_gradient``);
            a batched unroll uses torch's setting.
    """

    def __init__(self, model: nn.Module, *, mode: str, batch: bool = True,
                 inner_threads: int | None = None) -> None:
        self.model, self.mode, self.batch = model, mode, batch
        self.inner_threads = inner_threads
        self.fallback_reason: str | None = None

    @property
    def batched(self) -> bool:
        return self.batch and self.fallback_reason is None

    def __call__(self, inits: list[Params], images: Tensor, labels: Tensor, raw_lrs: Tensor,
                 real_x: Tensor, real_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        args = (self.model, inits, images, labels, raw_lrs, real_x, real_y)
        if len(inits) > 1 and self.batched:
            try:
                # N nets make every op N times larger: worth all the threads (measured
                # 0.68 against 1.02 s/iter for 8 LeNets on 2 cores with one).
                return batched_meta_gradient(*args, mode=self.mode)
            except (RuntimeError, NotImplementedError) as exc:
                # Nothing was changed (all of it is pure functions): loop from here on.
                self.fallback_reason = str(exc).strip().splitlines()[0][:200]
                warnings.warn(
                    f"this model can't be evaluated for several networks at once with "
                    f"torch.func.vmap ({self.fallback_reason}); looping over them instead",
                    RuntimeWarning, stacklevel=2,
                )
        return looped_meta_gradient(*args, mode=self.mode, inner_threads=self.inner_threads)
