"""The step map: the one place where weights become new weights.

Every weight update in ddcli -- the inner steps of distillation, their replay in
evaluation, the train-protocol's SGD, pretraining a pool -- is one call of a
``StepFn``: the gradient of the inner loss on a batch, then an update rule (the
functional-optimizer split of torchopt's ``update``/``apply_updates`` and of
``higher``'s differentiable optimizers):

    g_t              = d/dtheta CE(f(x_t; theta_t), y_t)
    theta_t+1, s_t+1 = rule(theta_t, g_t, s_t, eta_t)

``s`` is the rule's state (SGD's momentum buffers; nothing for plain GD). Targets y are
class indices or, for learned soft labels, float vectors (soft cross-entropy). With
``create_graph=True`` the whole map is differentiable in theta, s, x, y and eta (what
the meta-gradient needs); without, it runs no graph and returns detached tensors.

A ``StepFn`` moves one network, or N networks whose parameters are stacked along a new
leading dimension (``batched=True``): their gradients come from
``vmap(torch.func.grad(...))``, on inputs shared by all nets or given per net
(``per_net_data``). Under vmap a layer whose weights differ per net but whose input is
shared becomes one wider layer (conv1 of N LeNets is one conv with 6N filters).
Update rules act elementwise, so they are the same code for one or N nets.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from ddcli.core.params import Params, detached

State = dict[str, Tensor]
Rate = Tensor | float  # a tensor when it is learned (differentiated), else a float


def inner_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy; ``targets`` are class indices (B,) or soft targets (B, C).

    Soft targets need not sum to 1: a target's mass scales that image's gradient.
    """
    return F.cross_entropy(logits, targets)


class UpdateRule(Protocol):
    """How a gradient changes the weights: ``init`` the state, then ``update``."""

    def init(self, params: Params) -> State: ...

    def update(self, params: Params, grads: Params, state: State, lr: Rate
               ) -> tuple[Params, State]: ...


@dataclass(frozen=True)
class GD:
    """Plain gradient descent, the paper's inner step: theta - eta * g."""

    def init(self, params: Params) -> State:
        return {}

    def update(self, params, grads, state, lr):
        return {k: p - lr * grads[k] for k, p in params.items()}, state


@dataclass(frozen=True)
class SGD:
    """SGD with momentum and (L2) weight decay, exactly as ``torch.optim.SGD``:

        d = g + wd * theta;  b = momentum * b + d  (b starts at 0);  theta - eta * b

    With a float rate the arithmetic is torch.optim.SGD's, op for op (``add`` with
    ``alpha``), so the two agree bit for bit; a learned (tensor) rate multiplies.
    """

    momentum: float = 0.9
    weight_decay: float = 5e-4

    def init(self, params: Params) -> State:
        if not self.momentum:
            return {}
        return {k: torch.zeros_like(p) for k, p in params.items()}

    def update(self, params, grads, state, lr):
        new_params, new_state = {}, {}
        for k, p in params.items():
            d = grads[k].add(p, alpha=self.weight_decay) if self.weight_decay else grads[k]
            if self.momentum:
                # 0 * momentum + d == d exactly: the first step is torch's clone(d).
                d = new_state[k] = state[k].mul(self.momentum).add(d)
            new_params[k] = p.add(d, alpha=-lr) if isinstance(lr, float) else p - lr * d
        return new_params, new_state


@dataclass(frozen=True)
class Adam:
    """Adam with L2 weight decay, as ``torch.optim.Adam`` computes it:

        d = g + wd * theta;  m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2  (m, v start at 0)
        theta - eta / (1 - b1^n) * m / (sqrt(v) / sqrt(1 - b2^n) + eps)      (step n = 1, 2, ..)

    With a float rate the arithmetic is torch's, op for op; a learned (tensor) rate
    multiplies instead, so the step is differentiable in eta as in theta, m, v and the
    inputs (the inner optimiser of RaT-BPTT's published code). Where v is exactly 0 (a
    weight whose every gradient so far was 0, a dead ReLU's) sqrt's derivative is taken
    as 0: the step m / (sqrt(v) + eps) is differentiable there all the same, and the
    infinite derivative times dv/dg = 0 would make the whole meta-gradient NaN.
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def init(self, params: Params) -> State:
        state = {"step": torch.zeros((), dtype=torch.float64)}
        for k, p in params.items():
            state[f"m.{k}"], state[f"v.{k}"] = torch.zeros_like(p), torch.zeros_like(p)
        return state

    def update(self, params, grads, state, lr):
        b1, b2 = self.betas
        step = state["step"] + 1  # a count: only its value (n) enters the step
        n = float(step.detach())
        correction1, correction2_sqrt = 1 - b1**n, (1 - b2**n) ** 0.5
        new_params, new_state = {}, {"step": step}
        for k, p in params.items():
            g = grads[k].add(p, alpha=self.weight_decay) if self.weight_decay else grads[k]
            m = new_state[f"m.{k}"] = state[f"m.{k}"].lerp(g, 1 - b1)
            v = new_state[f"v.{k}"] = state[f"v.{k}"].mul(b2).addcmul(g, g, value=1 - b2)
            denom = (_sqrt(v) / correction2_sqrt).add(self.eps)
            if isinstance(lr, float):
                new_params[k] = p.addcdiv(m, denom, value=-lr / correction1)
            else:
                new_params[k] = p - (lr / correction1) * (m / denom)
        return new_params, new_state


def model_loss(model: nn.Module):
    """``(params, x, y) -> loss``: the inner loss of ``model`` run with ``params``."""
    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return inner_loss(functional_call(model, params, (x,)), y)
    return loss


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()
#: Compiled graphs one process may keep (one per model, shape and autocast state); past
#: torch's default of 8, torch.compile would quietly fall back to eager.
COMPILED_GRAPHS = 64


def compile_settings() -> None:
    """torch.compile's process-wide settings for ddcli's compiled functions."""
    import logging

    import torch._dynamo

    # inductor's C++ toolchain probe warns that this machine has no CUDA: not news
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, COMPILED_GRAPHS)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * COMPILED_GRAPHS)


def compiled_grads(model: nn.Module):
    """``(params, x, y) -> grads``: the inner loss's gradient under ``torch.compile``
    (inductor fuses instance norm, ReLU and pooling with their backward passes), cached
    per model. Only the gradient is compiled: the update rule runs eagerly, as inductor
    (torch 2.14, CPU) computed a wrong Linear weight step when the gradient and an
    update that reads the weight were one graph. Not bit-exact with the eager gradient:
    fused kernels round differently (tests/test_speed_levers.py states the tolerance).

    This compiles ``torch.func.grad`` of the loss (``StepFn(compiled="grad")``);
    ``compiled_loss_grads``, where AOTAutograd compiles the backward pass too, is what
    ddcli uses: 1.7x this on an evaluation's training step (ConvNet-128, bf16; with the
    one-channel first layer as ``conv3x3_as_1x1``, MNIST's too). The rows in
    results/index.json evaluated with ``--compile`` before 2026-12-07 used this one and
    name the commit that reproduces them.
    """
    if model not in _COMPILED:
        compile_settings()
        _COMPILED[model] = torch.compile(grad(model_loss(model)), dynamic=False)
    return _COMPILED[model]


_COMPILED_LOSS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def compiled_loss_grads(model: nn.Module):
    """``(params, x, y) -> grads``, as ``compiled_grads``, with the loss compiled and
    differentiated by autograd, so AOTAutograd compiles its backward pass as well:
    4.1x eager fp32 under bf16 on a CIFAR-10 ConvNet-128 batch of 256, where compiling
    ``torch.func.grad`` gave 1.3x (docs/performance.md). ``dd eval --compile``'s training
    steps, gradient matching's real side and its networks' training between rounds, and
    the graph-free steps of ``dd distill --compile`` use it.
    """
    if model not in _COMPILED_LOSS:
        compile_settings()
        loss = torch.compile(model_loss(model), dynamic=False)

        def grads(params: Params, x: Tensor, y: Tensor) -> Params:
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                g = torch.autograd.grad(loss(leaves, x, y), tuple(leaves.values()))
            return dict(zip(leaves, g))

        _COMPILED_LOSS[model] = grads
    return _COMPILED_LOSS[model]


_COMPILED_VJP: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def compiled_grad_vjp(model: nn.Module, *, soft_targets: bool):
    """``(params, x, y, c) -> (H c, (dg/dx)^T c[, (dg/dy)^T c])``: the vector-Jacobian
    product of the inner gradient g(params, x, y) with a cotangent ``c`` (a dict like
    ``params``), under ``torch.compile``; the third part only for soft (learned) targets.

    This is the second-order part of one step's VJP, the part of a meta-gradient that
    ``torch.autograd.grad(create_graph=True)`` leaves eager (``torch.compile`` can't
    differentiate through that in torch 2.14): here ``torch.func.vjp`` of
    ``torch.func.grad`` is one graph-free function, which inductor compiles forward,
    backward and double backward together. The update rule's own VJP (elementwise) stays
    eager (``StepFn.vjp``): inductor (torch 2.14, CPU) got the rate's gradient of an SGD
    update wrong when the two were one graph, as it did a Linear weight step for
    ``compiled_grads``. Cached per model and target kind.
    """
    per_model = _COMPILED_VJP.setdefault(model, {})
    if soft_targets not in per_model:
        compile_settings()
        g = grad(model_loss(model))
        if soft_targets:
            def grad_vjp(params: Params, x: Tensor, y: Tensor, c: Params):
                return torch.func.vjp(g, params, x, y)[1](c)
        else:
            def grad_vjp(params: Params, x: Tensor, y: Tensor, c: Params):
                return torch.func.vjp(lambda p, v: g(p, v, y), params, x)[1](c)
        per_model[soft_targets] = torch.compile(grad_vjp, dynamic=False)
    return per_model[soft_targets]


#: ``StepFn(compiled=...)``: eager, ``compiled_loss_grads`` (True or "loss"), ``compiled_grads`` ("grad").
COMPILE_KINDS = (False, True, "grad", "loss")


def _sqrt(v: Tensor) -> Tensor:
    """sqrt(v) for v >= 0, bit for bit, whose derivative at v = 0 is 0 (not inf)."""
    if not v.requires_grad:
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)


class StepFn:
    """One step of ``rule`` on the inner loss of ``model`` (see the module docstring).

    Args:
        model: the network structure; its own weights are never used or changed.
        rule: the update rule (default: plain GD, the paper's).
        batched: params are N stacked nets, (N, *shape) per tensor.
        per_net_data: with ``batched``, x carries a leading N dimension too (each net
            its own batch); shared by all nets otherwise.
        per_net_targets: with ``batched``, y carries a leading N dimension (default:
            as ``per_net_data``).
        compiled: run graph-free steps of one net through ``torch.compile``: True or
            "loss" compiles the loss with AOTAutograd's backward
            (``compiled_loss_grads``), "grad" ``torch.func.grad`` of the loss
            (``compiled_grads``, kept for comparison); steps with ``create_graph`` and
            stacked nets stay eager.

    Example:
        >>> step = StepFn(model, SGD(momentum=0.9))  # doctest: +SKIP
        >>> state = step.init(params)  # doctest: +SKIP
        >>> params, state = step(params, state, x, y, 0.01, create_graph=False)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, rule: UpdateRule | None = None, *,
                 batched: bool = False, per_net_data: bool = False,
                 per_net_targets: bool | None = None, compiled: bool | str = False) -> None:
        self.model, self.rule = model, rule or GD()
        self.batched, self.per_net_data = batched, per_net_data
        self.per_net_targets = per_net_data if per_net_targets is None else per_net_targets

        self._loss = loss = model_loss(model)
        if compiled not in COMPILE_KINDS:
            raise ValueError(f"compiled must be one of {COMPILE_KINDS}, got {compiled!r}")
        self.compiled = compiled if compiled and not batched else False
        self._compiled_grads = None
        if self.compiled:
            use = compiled_grads if self.compiled == "grad" else compiled_loss_grads
            self._compiled_grads = use(model)
        if batched:
            dims = (0, 0 if per_net_data else None, 0 if self.per_net_targets else None)
            self._grads = vmap(grad(loss), in_dims=dims)
            self._grads_and_loss = vmap(grad_and_value(loss), in_dims=dims)

    def with_rule(self, rule: UpdateRule) -> "StepFn":
        return StepFn(self.model, rule, batched=self.batched, per_net_data=self.per_net_data,
                      per_net_targets=self.per_net_targets, compiled=self.compiled)

    def batched_like(self, *, per_net_data: bool = False,
                     per_net_targets: bool | None = None) -> "StepFn":
        """The same step (model and rule) for N stacked nets."""
        return StepFn(self.model, self.rule, batched=True, per_net_data=per_net_data,
                      per_net_targets=per_net_targets)

    def single_like(self) -> "StepFn":
        """The same step (model and rule) for one net."""
        return StepFn(self.model, self.rule, compiled=self.compiled)

    def init(self, params: Params) -> State:
        return self.rule.init(params)

    def grads(self, params: Params, x: Tensor, y: Tensor, *, create_graph: bool) -> Params:
        """The inner loss's gradient at ``params`` (per net, when batched)."""
        if self.batched:
            # torch.func.grad ignores an enclosing no_grad for its own gradient, so this
            # only stops the outer level from recording a graph nobody will use.
            with contextlib.nullcontext() if create_graph else torch.no_grad():
                return self._grads(params, x, y)
        if self._compiled_grads is not None and not create_graph:
            return self._compiled_grads(detached(params), x, y)
        if not create_graph and not all(p.requires_grad for p in params.values()):
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = self._loss(params, x, y)
        g = torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)
        return dict(zip(params, g))

    def with_loss(self, params: Params, state: State, x: Tensor, y: Tensor, lr: Rate
                  ) -> tuple[Params, State, Tensor]:
        """A step without a graph that also returns the inner loss before it: a 0-dim
        tensor, or (N,) for stacked nets (pretraining reports and checks it)."""
        with torch.no_grad():
            if self.batched:
                grads, loss = self._grads_and_loss(params, x, y)
            else:
                live = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                with torch.enable_grad():
                    value = self._loss(live, x, y)
                    grads = dict(zip(live, torch.autograd.grad(value, tuple(live.values()))))
                loss = value.detach()
            new, new_state = self.rule.update(params, grads, state, lr)
        return {k: v.detach() for k, v in new.items()}, new_state, loss

    def vjp(self, params: Params, state: State, grads: Params, x: Tensor, y: Tensor,
            lr: Tensor, cotangent: tuple[Params, State], *, soft_targets: bool
            ) -> tuple[Params, State, Tensor, Tensor | None, Tensor]:
        """One step's vector-Jacobian product, compiled (one net, ``compiled`` set).

        The cotangent (a_params, a_state) of the step's outputs maps to those of its
        inputs: (a_params, a_state) before the step, then x, y (None unless
        ``soft_targets``) and the rate ``lr`` (a 0-dim tensor). ``grads`` is the inner
        gradient at ``params`` (the forward pass computed it). The update rule's part is
        taken eagerly on that small graph, the gradient's part by ``compiled_grad_vjp``.
        All inputs are plain tensors; so are the results (no graph).
        """
        if self.batched or not self.compiled:
            raise ValueError("StepFn.vjp is the compiled path of one net")
        with torch.enable_grad():
            theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            g = {k: v.detach().requires_grad_(True) for k, v in grads.items()}
            s = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in state.items()}
            rate = lr.detach().requires_grad_(True)
            new, new_state = self.rule.update(theta, g, s, rate)
            outs, cots = list(new.values()), list(cotangent[0].values())
            for k, v in new_state.items():
                if v.requires_grad:
                    outs.append(v)
                    cots.append(cotangent[1][k])
            live = [v for v in s.values() if v.requires_grad]
            found = torch.autograd.grad(outs, (*theta.values(), *g.values(), *live, rate),
                                        grad_outputs=cots, allow_unused=True,
                                        materialize_grads=True)
        n = len(theta)
        direct, c_g = found[:n], dict(zip(g, found[n:2 * n]))
        it = iter(found[2 * n:-1])
        a_state = {k: next(it) if v.requires_grad else torch.zeros_like(v) for k, v in s.items()}
        second = compiled_grad_vjp(self.model, soft_targets=soft_targets)(
            detached(params), x.detach(), y.detach(), c_g)
        a_params = {k: d + second[0][k] for k, d in zip(theta, direct)}
        return a_params, a_state, second[1], second[2] if soft_targets else None, found[-1]

    def __call__(self, params: Params, state: State, x: Tensor, y: Tensor, lr: Rate, *,
                 create_graph: bool) -> tuple[Params, State]:
        """New weights and state as new tensors; ``params`` and ``state`` are untouched."""
        grads = self.grads(params, x, y, create_graph=create_graph)
        if create_graph:
            return self.rule.update(params, grads, state, lr)
        with torch.no_grad():
            new, new_state = self.rule.update(params, grads, state, lr)
        return {k: v.detach() for k, v in new.items()}, new_state
