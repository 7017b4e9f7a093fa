"""The inner loop of dataset distillation and its meta-gradient.

Notation. theta_0 are the network's initial weights, s_0 the update rule's state (empty
for plain GD); step t of the unroll takes inputs (x_t, y_t) from the synthetic set D
(images, and labels when they are learned) as the schedule says, and rate eta_t (a
learned rate, stored raw: ``ddcli.core.rates``). One step is the step map

    (theta_{t+1}, s_{t+1}) = Phi(theta_t, s_t, x_t, y_t, eta_t)      (``ddcli.core.steps``)

and the outer loss is L = CE(f(x_real; theta_N), y_real) after N steps.

Meta-gradient. With the adjoint a_t = (dL/dtheta_t, dL/ds_t), starting at
a_N = (dL/dtheta_N, 0), the reverse recursion over t = N-1 .. t0 is

    a_t   = (dPhi/d(theta_t, s_t))^T a_{t+1}
    dL/dD += (dPhi/dD)^T a_{t+1}            (through x_t, y_t and eta_t)

For plain GD this is a_t = a_{t+1} - eta_t * H_t a_{t+1} (H_t the inner Hessian),
dL/dx += -eta_t (dg_t/dx)^T a_{t+1} and dL/dr_t = -sigmoid(r_t) <g_t, a_{t+1}>: every
term is one vector-Jacobian product of the step map with the cotangent a_{t+1}.

Truncation (RaT-BPTT). With a window [t0, N) only the last N - t0 steps are
differentiated: steps 0 .. t0-1 run without a graph and theta_t0 is treated as a
constant. With t0 = 0 this is the full meta-gradient.

The memory modes compute exactly the recursion above, differently:

- ``full``: autograd through the whole window, built with create_graph=True.
- ``stepwise``: each step's graph is built from detached leaves (theta_t, s_t) and kept;
  the reverse loop walks the recursion, one VJP per step (the reference's scheme).
- ``recompute``: only (theta_t, s_t) are kept from the forward pass; the reverse loop
  rebuilds one step's graph at a time and frees it, so graph memory is one step's,
  whatever N is, at the cost of a second forward/backward per step.

With a compiled step (``StepFn(compiled=...)``, ``dd distill --compile``) ``full`` and
``recompute`` both run ``_compiled_reverse``: the forward pass keeps (theta_t, s_t, g_t)
without a graph and the reverse loop takes each step's VJP as one compiled function
(``StepFn.vjp``), the double backward included. ``stepwise`` stays eager.

Invariants: theta_0 is never modified (steps build new tensors); the schedule is a pure
function of t, so a rebuilt step sees the same inputs (and augmentation); all three
modes agree to float64 round-off (tests/test_unroll.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ddcli.core.params import Params, detached, leaves
from ddcli.core.rates import lrs_from_raw
from ddcli.core.schedules import CyclicSchedule, Schedule
from ddcli.core.steps import State, StepFn

# The outer loss of the final weights and its gradient there: (L, a_N by parameter).
OuterFn = Callable[[Params], tuple[Tensor, tuple[Tensor, ...]]]
MODES = ("full", "stepwise", "recompute")


class Unrolled(NamedTuple):
    params: Params  # theta after the last step
    trace: dict[int, Params] | None  # theta before step t (t = 0..T), if asked for
    state: State  # the update rule's final state


def unroll(
    step: StepFn | nn.Module,
    params: Params,
    images: Tensor,
    labels: Tensor,
    lrs: Tensor,
    *,
    create_graph: bool,
    schedule: Schedule | None = None,
    state: State | None = None,
    start: int = 0,
    stop: int | None = None,
    trace: bool = False,
    observe: Callable[[int, Params], None] | None = None,
) -> Unrolled:
    """Apply the schedule's steps ``start .. stop-1`` to ``params``.

    Distillation calls it with ``create_graph=True`` (the ``full`` memory mode) and
    evaluation with ``create_graph=False`` (a replay: the same steps, no meta-graph).

    Args:
        step: the step map, or a model (plain GD on it).
        params: the initial weights (never modified).
        images: synthetic images, (S, n, C, H, W) (a leading net dim for per-net sets).
        labels: (S, n) class indices, or (S, n, classes) soft labels.
        lrs: the rates (after ``lrs_from_raw``), indexed by ``schedule.rate_index``.
        create_graph: keep the graph for a meta-gradient, or not.
        schedule: default the paper's: step t uses images[t mod S], T = len(lrs).
        state: the update rule's state (default: ``step.init(params)``).
        start, stop: the steps to run (default all of the schedule).
        trace: also return the weights before every step and after the last.
        observe: called as ``observe(t, params)`` with the weights before step t and
            after the last (t = stop): a trace without keeping it.

    Returns:
        ``Unrolled(params, trace, state)``.

    Example:
        >>> final = unroll(model, params, images, labels, lrs, create_graph=False).params  # doctest: +SKIP
    """
    step = step if isinstance(step, StepFn) else StepFn(step)
    schedule = schedule or CyclicSchedule(images.shape[0], lrs.shape[0])
    stop = schedule.length if stop is None else stop
    if not create_graph:
        params = detached(params)
    state = step.init(params) if state is None else state
    history: dict[int, Params] | None = {start: params} if trace else None
    for t in range(start, stop):
        if observe is not None:
            observe(t, params)
        x, y = schedule.inputs(t, images, labels)
        params, state = step(params, state, x, y, lrs[schedule.rate_index(t)],
                             create_graph=create_graph)
        if history is not None:
            history[t + 1] = params
    if observe is not None:
        observe(stop, params)
    return Unrolled(params, history, state)


@dataclass
class MetaGradient:
    """The outer loss and its gradient with respect to each learned tensor, detached."""

    loss: Tensor
    grads: dict[str, Tensor]  # "images", "raw_lrs" and, when learned, "soft_labels"


def differentiate_unroll(
    step: StepFn,
    outer: OuterFn,
    params0: Params,
    learned: dict[str, Tensor],
    *,
    labels: Tensor | None = None,
    schedule: Schedule | None = None,
    mode: str = "full",
    window: tuple[int, int] | None = None,
    inner_threads: int | None = None,
) -> MetaGradient:
    """The meta-gradient of ``outer`` after the unroll, in any memory mode.

    The outer loss is differentiated first, on its own (``outer`` returns a_N), and its
    graph is gone before the unroll's backward pass starts; the chain rule makes this
    the same computation as one backward pass through both.

    Args:
        step: the step map (one net or N stacked ones).
        outer: maps the final weights (autograd leaves) to (outer loss, a_N); see
            ``adjoint_of``.
        params0: theta_0 (not modified; need not require grad).
        learned: the tensors to differentiate: ``images`` (S, n, C, H, W), ``raw_lrs``
            (T,), and ``soft_labels`` (S, n, classes) when the labels are learned.
        labels: the fixed labels when they are not in ``learned``.
        schedule: default the paper's cyclic one over len(raw_lrs) steps.
        mode: "full", "stepwise" or "recompute" (see the module docstring).
        window: (t0, N): differentiate steps t0 .. N-1 and take the outer loss after
            step N; steps before t0 run without a graph. Default (0, T).
        inner_threads: CPU threads for the unroll's own work (its steps and their
            backward pass); None leaves torch's setting. The outer loss always runs
            with torch's setting.

    Returns:
        ``MetaGradient(loss, grads)`` with a gradient for every tensor in ``learned``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown unroll memory mode {mode!r}")
    names = list(learned)
    wrt = {k: v.detach().requires_grad_(True) for k, v in learned.items()}
    fixed_labels = labels
    schedule = schedule or CyclicSchedule(wrt["images"].shape[0], wrt["raw_lrs"].shape[0])
    t0, stop = window or (0, schedule.length)
    inner = _threads(inner_threads)

    def run(w: dict[str, Tensor], params: Params, state: State, begin: int, end: int, *,
            create_graph: bool) -> Unrolled:
        ys = w["soft_labels"] if "soft_labels" in w else fixed_labels
        return unroll(step, params, w["images"], ys, lrs_from_raw(w["raw_lrs"]),
                      create_graph=create_graph, schedule=schedule, state=state,
                      start=begin, stop=end)

    with inner:
        # Steps before the window: no graph; theta_t0 is a constant of the meta-gradient.
        start = run({k: v.detach() for k, v in wrt.items()}, params0, step.init(params0),
                    0, t0, create_graph=False) if t0 > 0 else Unrolled(params0, None,
                                                                     step.init(params0))
    if step.compiled and mode in ("full", "recompute"):
        return _compiled_reverse(step, outer, start, wrt, fixed_labels, schedule, t0, stop,
                                 inner)
    if mode == "full":
        with inner:
            end = run(wrt, leaves(start.params), start.state, t0, stop, create_graph=True)
        value, adjoint = outer(leaves(end.params))
        with inner:
            grads = torch.autograd.grad(tuple(end.params.values()), tuple(wrt.values()),
                                        grad_outputs=adjoint, materialize_grads=True)
        return MetaGradient(value, dict(zip(names, grads)))
    return _reverse_loop(run, outer, start, wrt, t0, stop, keep_graphs=mode == "stepwise",
                         inner=inner)


def _reverse_loop(run, outer, start: Unrolled, wrt: dict[str, Tensor], t0: int, stop: int,
                  *, keep_graphs: bool, inner) -> MetaGradient:
    names = list(wrt)
    plain = {k: v.detach() for k, v in wrt.items()}

    def step_graph(carry: tuple[Params, State], t: int):
        """Step t's graph from detached leaves: (its leaves, its outputs)."""
        theta, state = leaves(carry[0]), leaves(carry[1])
        out = run(wrt, theta, state, t, t + 1, create_graph=True)
        return (*theta.values(), *state.values()), (*out.params.values(), *out.state.values())

    # Forward: (theta_t, s_t) for every t, detached; "stepwise" also keeps every graph.
    carries: list[tuple[Params, State] | None] = [(start.params, start.state)]
    graphs = []
    with inner:
        for t in range(t0, stop):
            if keep_graphs:
                ins, outs = step_graph(carries[-1], t)
                graphs.append((ins, outs))
                n = len(carries[-1][0])
                new = (dict(zip(carries[-1][0], (o.detach() for o in outs[:n]))),
                       dict(zip(carries[-1][1], (o.detach() for o in outs[n:]))))
            else:
                out = run(plain, carries[-1][0], carries[-1][1], t, t + 1, create_graph=False)
                new = (detached(out.params), detached(out.state))
            carries.append(new)

    final_params, final_state = carries[-1]
    value, adjoint = outer(leaves(final_params))
    adjoint = (*adjoint, *(torch.zeros_like(v) for v in final_state.values()))
    total = {k: torch.zeros_like(v) for k, v in wrt.items()}
    with inner:
        for i in reversed(range(stop - t0)):
            carries[i + 1] = None  # (theta, s) after this step are no longer needed: free them
            ins, outs = graphs.pop() if keep_graphs else step_graph(carries[i], t0 + i)
            # The adjoint of the window's first weights is never used: don't compute it.
            wanted = (*wrt.values(), *ins) if i > 0 else tuple(wrt.values())
            grads = torch.autograd.grad(outs, wanted, grad_outputs=adjoint,
                                        materialize_grads=True, allow_unused=True)
            for k, g in zip(names, grads):
                total[k] += g
            adjoint = grads[len(names):]
            del ins, outs
    return MetaGradient(value, total)


def _compiled_reverse(step: StepFn, outer, start: Unrolled, wrt: dict[str, Tensor],
                      fixed_labels: Tensor | None, schedule: Schedule, t0: int, stop: int,
                      inner) -> MetaGradient:
    """The recursion of the module docstring with each step's VJP compiled
    (``StepFn.vjp``): the forward pass keeps (theta_t, s_t, g_t) without a graph, the
    reverse pass takes one compiled VJP per step. Nothing here builds a double-backward
    graph, so graph memory is one step's, as in ``recompute``."""
    names = list(wrt)
    plain = {k: v.detach() for k, v in wrt.items()}
    soft = "soft_labels" in wrt
    plain_labels = plain["soft_labels"] if soft else fixed_labels
    lrs = lrs_from_raw(plain["raw_lrs"])
    # Forward: (theta_t, s_t) and the inner gradient g_t at theta_t, for every t.
    carries: list[tuple[Params, State, Params] | None] = []
    params, state = start.params, start.state
    with inner:
        for t in range(t0, stop):
            x, y = schedule.inputs(t, plain["images"], plain_labels)
            g = step.grads(params, x, y, create_graph=False)
            carries.append((params, state, g))
            with torch.no_grad():
                params, state = step.rule.update(params, g, state, lrs[schedule.rate_index(t)])
            params = detached(params)
    value, adjoint = outer(leaves(params))
    a_params = dict(zip(params, adjoint))
    a_state = {k: torch.zeros_like(v) for k, v in state.items()}
    total = {k: torch.zeros_like(v) for k, v in wrt.items()}
    d_lrs = torch.zeros_like(lrs)  # dL/d eta_i, summed over the steps; to raw rates once
    with inner:
        for t in reversed(range(t0, stop)):
            theta, s, g = carries[t - t0]
            carries[t - t0] = None
            with torch.enable_grad():  # the schedule's own ops (selection, augmentation)
                x, y = schedule.inputs(t, wrt["images"], wrt["soft_labels"] if soft
                                       else fixed_labels)
            i = schedule.rate_index(t)
            a_params, a_state, dx, dy, dlr = step.vjp(theta, s, g, x, y, lrs[i],
                                                      (a_params, a_state), soft_targets=soft)
            d_lrs[i] += dlr
            outs, cots = ([x, y], [dx, dy]) if soft else ([x], [dx])
            found = torch.autograd.grad(outs, tuple(wrt.values()), grad_outputs=cots,
                                        allow_unused=True, materialize_grads=True)
            for k, d in zip(names, found):
                total[k] += d
    with torch.enable_grad():
        total["raw_lrs"] += torch.autograd.grad(lrs_from_raw(wrt["raw_lrs"]), wrt["raw_lrs"],
                                                d_lrs)[0]
    return MetaGradient(value, total)


def adjoint_of(loss: Callable[[Params], Tensor]) -> OuterFn:
    """The ``outer`` of a scalar loss: its value and a_N = d loss / d theta_N."""

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        value = loss(final)
        return value.detach(), torch.autograd.grad(value, tuple(final.values()))

    return outer


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
