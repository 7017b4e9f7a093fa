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
- ``stepwise``: each step's graph is built from detached leaves (theta_t, x_s, r_t) and
  kept; the reverse loop walks the recursion above, one VJP per step (the reference's
  scheme). Nothing chains across steps, but all T graphs are alive at the peak.
- ``recompute``: only theta_t (detached, T x |theta| floats) is kept from the forward
  pass; the reverse loop rebuilds one step's graph at a time and frees it before the
  next, so graph memory is one step's whatever T is, at the cost of a second
  forward/backward per step. a_0 is never needed, so step 0's VJP skips it.

The step map is a parameter (``step``): ``gd_step`` for one network, or the batched
step of ``ddcli.core.nets`` that moves N stacked networks at once; the recursion is the
same for both because it only ever asks for VJPs of the step map.

Invariants: theta_0 is never modified (steps build new tensors); synthetic labels are
fixed; all three modes agree to float64 round-off (tests/test_unroll.py).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
# The outer loss of the final weights and its gradient there: (L, a_T by parameter).
OuterFn = Callable[[Params], tuple[Tensor, tuple[Tensor, ...]]]


class StepFn(Protocol):
    """One GD step on (x, y) with rate ``lr``: returns the new weights as new tensors."""

    def __call__(self, params: Params, x: Tensor, y: Tensor, lr: Tensor, *,
                 create_graph: bool) -> Params: ...


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
        params = _leaves(params)
    steps = images.shape[0]
    history: list[Params] | None = [params] if trace else None
    for t in range(lrs.shape[0]):
        s = t % steps
        params = gd_step(model, params, images[s], labels[s], lrs[t], create_graph=create_graph)
        if not create_graph:
            params = _leaves(params)
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
    inner_threads: int | None = None,
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
        inner_threads: CPU threads for the unroll's own work (its steps and their
            backward pass); None leaves torch's setting. The outer loss always runs
            with torch's setting.

    Returns:
        (loss, d loss / d images, d loss / d raw_lrs), all detached.
    """

    def step(params, x, y, lr, *, create_graph):
        return gd_step(model, params, x, y, lr, create_graph=create_graph)

    outer = adjoint_of(lambda params: loss_fn(model, params, real_x, real_y))
    return differentiate_unroll(step, outer, params0, images, labels, raw_lrs, mode=mode,
                                inner_threads=inner_threads)


def adjoint_of(loss: Callable[[Params], Tensor]) -> OuterFn:
    """The ``outer`` of a scalar loss: its value and a_T = d loss / d theta_T."""

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        value = loss(final)
        return value.detach(), torch.autograd.grad(value, tuple(final.values()))

    return outer


def differentiate_unroll(
    step: StepFn,
    outer: OuterFn,
    params0: Params,
    images: Tensor,
    labels: Tensor,
    raw_lrs: Tensor,
    *,
    mode: str = "full",
    inner_threads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``meta_gradient`` for any step map and outer loss (e.g. N networks at once).

    The outer loss is differentiated first, on its own (``outer`` returns a_T), and its
    graph is gone before the unroll's backward pass starts; the chain rule makes this
    the same computation as one backward pass through both.

    Args:
        step: the GD step map (see ``StepFn``); it must return new tensors.
        outer: maps the final weights (autograd leaves) to (outer loss, a_T); see
            ``adjoint_of``.
        params0, images, labels, raw_lrs, mode, inner_threads: as in ``meta_gradient``.

    Returns:
        (loss, d loss / d images, d loss / d raw_lrs), all detached.
    """
    inner = _threads(inner_threads)
    if mode == "full":
        images = images.detach().requires_grad_(True)
        raw_lrs = raw_lrs.detach().requires_grad_(True)
        lrs = F.softplus(raw_lrs)
        params, steps = _leaves(params0), images.shape[0]
        with inner:
            for t in range(raw_lrs.shape[0]):
                s = t % steps
                params = step(params, images[s], labels[s], lrs[t], create_graph=True)
        value, adjoint = outer(_leaves(params))
        with inner:
            g_img, g_lr = torch.autograd.grad(tuple(params.values()), (images, raw_lrs),
                                              grad_outputs=adjoint)
        return value, g_img, g_lr
    if mode not in ("stepwise", "recompute"):
        raise ValueError(f"unknown unroll memory mode {mode!r}")
    return _reverse_loop(step, outer, params0, images.detach(), labels, raw_lrs.detach(),
                         keep_graphs=mode == "stepwise", inner=inner)


class _threads:
    """Re-enterable: run a block with ``n`` intra-op threads (None: leave as is)."""

    def __init__(self, n: int | None) -> None:
        self.n, self.saved = n, None

    def __enter__(self) -> None:
        if self.n is not None:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            torch.set_num_threads(self.saved)


def _leaves(params: Params) -> Params:
    """Fresh autograd leaves on the same storage (no copy), requiring grad."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _step_graph(step: StepFn, theta: Params, x: Tensor, y: Tensor, raw_lr: Tensor):
    """One step's graph from detached leaves: (leaves, new weights)."""
    x_leaf = x.requires_grad_(True)
    r_leaf = raw_lr.requires_grad_(True)
    inputs = _leaves(theta)
    out = step(inputs, x_leaf, y, F.softplus(r_leaf), create_graph=True)
    return (x_leaf, r_leaf, *inputs.values()), out


def _reverse_loop(step, outer, theta0, images, labels, raw_lrs, *, keep_graphs, inner):
    steps, total = images.shape[0], raw_lrs.shape[0]
    # Forward: theta_t for every t, detached; "stepwise" also keeps every step's graph,
    # "recompute" runs the steps without one.
    thetas: list[Params | None] = [theta0]
    graphs: list[tuple] = []
    params = theta0
    with inner:
        for t in range(total):
            s = t % steps
            if keep_graphs:
                leaves, new = _step_graph(step, params, images[s].detach(), labels[s],
                                          raw_lrs[t].detach())
                graphs.append((leaves, new))
            else:
                new = step(_leaves(params), images[s], labels[s], F.softplus(raw_lrs[t]),
                           create_graph=False)
            params = {k: v.detach() for k, v in new.items()}
            thetas.append(params)

    value, adjoint = outer(_leaves(params))
    g_img = torch.zeros_like(images)
    g_lr = torch.zeros_like(raw_lrs)
    with inner:
        for t in reversed(range(total)):
            s = t % steps
            thetas[t + 1] = None  # theta_{t+1} is no longer needed: free it first
            if keep_graphs:
                leaves, out = graphs.pop()
            else:
                leaves, out = _step_graph(step, thetas[t], images[s].detach(), labels[s],
                                          raw_lrs[t].detach())
            # a_0 is never used: at t = 0 ask only for the image and rate terms.
            wanted = leaves if t > 0 else leaves[:2]
            grads = torch.autograd.grad(tuple(out.values()), wanted, grad_outputs=adjoint,
                                        materialize_grads=True)
            g_img[s] += grads[0]
            g_lr[t] += grads[1]
            adjoint = grads[2:]
            del leaves, out
    return value, g_img, g_lr
