"""The inner loop of dataset distillation and its meta-gradient.

Notation. theta_0 are the network's initial weights; x_s, y_s are the synthetic images
and labels of step s (S steps, cycled E epochs, T = S * E GD steps); eta_t = softplus(r_t)
is the learning rate of GD step t, stored raw as r_t. One GD step is

    theta_{t+1} = theta_t - eta_t * g_t,    g_t = d/dtheta CE(f(x_{t mod S}; theta_t), y)

and the outer loss is L = CE(f(x_real; theta_T), y_real).

Meta-gradient. With the adjoint a_t = dL/dtheta_t, starting at a_T = dL/dtheta_T,
the reverse recursion over t = T-1 .. 0 is

    a_t        = a_{t+1} - eta_t * H_t a_{t+1}         (H_t = dg_t/dtheta_t, a Hessian-vector product)
    dL/dx_s   += -eta_t * (dg_t/dx_s)^T a_{t+1}        (mixed second derivative, for t mod S = s)
    dL/dr_t    = -sigmoid(r_t) * <g_t, a_{t+1}>        (softplus' = sigmoid)

Every term is one vector-Jacobian product of the map (theta_t, x_s, r_t) -> theta_{t+1}
with the cotangent a_{t+1}. The three memory modes compute exactly this, differently:

- ``full``: autograd through the whole unroll built with create_graph=True. Keeps every
  step's double-backward graph and chains them.
- ``stepwise``: each step's graph is built from a detached copy of theta_t and kept; the
  reverse loop walks the recursion above, one VJP per step (the reference's scheme).
- ``recompute``: only theta_t (detached, T x |theta| floats) is kept from the forward
  pass; the reverse loop rebuilds one step's graph at a time, so graph memory no longer
  grows with T at the cost of a second forward/backward per step.

Invariants: theta_0 is never modified (steps build new tensors); synthetic labels are
fixed; all three modes agree to float64 round-off (tests/test_unroll.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def softplus_inverse(y: float | Tensor) -> Tensor:
    """Raw value r with softplus(r) == y: r = log(expm1(y)). Used to initialise raw rates."""
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    return torch.log(torch.expm1(y))


def gd_step(
    model: nn.Module, params: Params, x: Tensor, y: Tensor, lr: Tensor, *, create_graph: bool
) -> Params:
    """One plain GD step on (x, y). Returns new tensors; ``params`` is untouched."""
    logits = functional_call(model, params, (x,))
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}


def unroll(
    model: nn.Module,
    params: Params,
    images: Tensor,
    labels: Tensor,
    lrs: Tensor,
    *,
    create_graph: bool,
    trace: bool = False,
) -> tuple[Params, list[Params] | None]:
    """Apply T = len(lrs) GD steps, cycling over the S synthetic steps.

    Args:
        model: the network; only its structure is used (weights come from ``params``).
        params: initial weights theta_0, by parameter name.
        images: synthetic images, shape (S, n, C, H, W).
        labels: their labels, shape (S, n).
        lrs: learning rates eta_t (already through softplus), shape (T,).
        create_graph: keep the graph for a meta-gradient (distillation) or not (evaluation).
        trace: also return the weights before every step and the final ones (T + 1 dicts).

    Returns:
        The final weights theta_T, and the trace or None.
    """
    if not create_graph:
        # GD needs d loss / d theta even in evaluation: make the weights leaves that
        # require grad, but never connect them to anything the caller holds.
        params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    steps = images.shape[0]
    history: list[Params] | None = [params] if trace else None
    for t in range(lrs.shape[0]):
        s = t % steps
        params = gd_step(model, params, images[s], labels[s], lrs[t], create_graph=create_graph)
        if not create_graph:
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        if history is not None:
            history.append(params)
    return params, history


def outer_loss(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def meta_gradient(
    model: nn.Module,
    params0: Params,
    images: Tensor,
    labels: Tensor,
    raw_lrs: Tensor,
    real_x: Tensor,
    real_y: Tensor,
    *,
    mode: str = "full",
    loss_fn: Callable[[nn.Module, Params, Tensor, Tensor], Tensor] = outer_loss,
) -> tuple[Tensor, Tensor, Tensor]:
    """Outer loss and its gradient with respect to the images and the raw rates.

    Args:
        model: the network structure.
        params0: the init theta_0 (not modified; need not require grad).
        images: (S, n, C, H, W) synthetic images.
        labels: (S, n) synthetic labels.
        raw_lrs: (T,) raw rates; the rates are softplus(raw_lrs).
        real_x, real_y: a batch of real data for the outer loss.
        mode: "full", "stepwise" or "recompute" (see the module docstring).
        loss_fn: the outer objective given the final weights (the attack objective
            relabels inside it).

    Returns:
        (loss, d loss / d images, d loss / d raw_lrs), all detached.
    """
    images = images.detach().requires_grad_(True)
    raw_lrs = raw_lrs.detach().requires_grad_(True)
    theta0 = {k: v.detach().requires_grad_(True) for k, v in params0.items()}
    if mode == "full":
        lrs = F.softplus(raw_lrs)
        final, _ = unroll(model, theta0, images, labels, lrs, create_graph=True)
        loss = loss_fn(model, final, real_x, real_y)
        g_img, g_lr = torch.autograd.grad(loss, (images, raw_lrs))
        return loss.detach(), g_img, g_lr
    if mode not in ("stepwise", "recompute"):
        raise ValueError(f"unknown unroll memory mode {mode!r}")
    return _reverse_loop(model, theta0, images, labels, raw_lrs, real_x, real_y, mode, loss_fn)


def _reverse_loop(model, theta0, images, labels, raw_lrs, real_x, real_y, mode, loss_fn):
    steps, total = images.shape[0], raw_lrs.shape[0]
    keep_graphs = mode == "stepwise"
    # Forward: theta_t detached for every t; with "stepwise" also the step's output
    # theta_{t+1} (its graph reaches theta_t, x_s and r_t).
    thetas: list[Params] = [theta0]
    outputs: list[Params] = []
    params = theta0
    for t in range(total):
        s = t % steps
        if keep_graphs:
            lr = F.softplus(raw_lrs[t])
            new = gd_step(model, params, images[s], labels[s], lr, create_graph=True)
            outputs.append(new)
        else:
            new = gd_step(
                model, params, images[s].detach(), labels[s], F.softplus(raw_lrs[t].detach()),
                create_graph=False,
            )
        params = {k: v.detach().requires_grad_(True) for k, v in new.items()}
        thetas.append(params)

    loss = loss_fn(model, thetas[-1], real_x, real_y)
    adjoint: Sequence[Tensor] = torch.autograd.grad(loss, tuple(thetas[-1].values()))
    g_img = torch.zeros_like(images)
    g_lr = torch.zeros_like(raw_lrs)
    for t in reversed(range(total)):
        s = t % steps
        if keep_graphs:
            out = outputs.pop()
        else:
            lr = F.softplus(raw_lrs[t])
            out = gd_step(model, thetas[t], images[s], labels[s], lr, create_graph=True)
        theta_t = tuple(thetas[t].values())
        grads = torch.autograd.grad(
            tuple(out.values()), theta_t + (images, raw_lrs), grad_outputs=tuple(adjoint),
            allow_unused=True,
        )
        adjoint = grads[: len(theta_t)]
        if grads[-2] is not None:
            g_img += grads[-2]
        if grads[-1] is not None:
            g_lr += grads[-1]
        thetas[t + 1] = {}  # free theta_{t+1} early
    return loss.detach(), g_img, g_lr
