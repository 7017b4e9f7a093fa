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

The real batch. The outer loss is a mean over the real images, so it can go through them
in equal chunks, each chunk's loss weighted by its share of the batch and its gradient
summed into a_N before the next chunk's graph is built: the same a_N to round-off, with
one chunk's activations alive instead of the whole batch's (``outer_chunk``; by default
as many images as ``OUTER_ACTIVATION_BUDGET`` allows, so LeNet's 1024 MNIST images are
one chunk and AlexCifarNet's 1024 CIFAR-10 images several). With ``precision=
"bf16-outer"`` the outer loss and its gradient run under bfloat16 autocast, the unroll
and every learned tensor staying float32 (opt in: it changes the meta-gradient by more
than round-off; docs/performance.md has the measurements).

Kernels. ``inner_onednn=False`` runs one network's unroll on ATen's own convolutions
(im2col and a GEMM) instead of oneDNN's, and the outer loss on whatever was set before:
for small convolutions on a few synthetic images oneDNN's per-call cost dominates (its
input-gradient kernel above all, which the meta-gradient's double backward needs), while
on the real batch it is the faster one. ``ddcli.infra.device.unroll_onednn`` decides.

The sum over networks is returned; the caller divides by the global number of networks
(several processes each hold some of them). A model vmap can't run (data-dependent
control flow, ``.item()`` in ``forward``) falls back to a loop over networks, once and
for the rest of the run, with a warning.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ddcli.core.metrics import activation_floats
from ddcli.core.params import Params, stack_params
from ddcli.core.schedules import Schedule
from ddcli.core.steps import StepFn, compile_settings
from ddcli.core.unroll import MetaGradient, OuterFn, differentiate_unroll

OuterLoss = Callable[[nn.Module, Params, Tensor, Tensor], Tensor]
PRECISIONS = ("fp32", "bf16-outer")

# Floats of layer outputs one outer-loss chunk may hold, per network (128 MB in float32);
# autograd saves about 1.5x that for the backward pass.
OUTER_ACTIVATION_BUDGET = 2**25


def outer_loss(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the final weights on a real batch (hard labels)."""
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def outer_chunks(n: int, chunk: int | None) -> list[slice]:
    """``n`` real images in equal contiguous chunks of at most ``chunk`` (None: one)."""
    parts = 1 if not chunk else math.ceil(n / chunk)
    size = math.ceil(n / parts) if n else 0
    return [slice(i, min(n, i + size)) for i in range(0, n, size)] if n else [slice(0, 0)]


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def _autocast(precision: str, device: torch.device):
    if _check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # bf16-outer


def channels_last(x: Tensor) -> Tensor:
    """Images (B, C, H, W) stored channels-last (NHWC). A one-channel batch is already
    in that order, but only explicit NHWC strides make the convolutions that follow pick
    their channels-last kernels and pass the layout on."""
    b, c, h, w = x.shape
    if c == 1:
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


_COMPILED_OUTER: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def compiled_outer_loss(model: nn.Module, loss_fn: OuterLoss):
    """``(params, x, y) -> loss_fn(model, params, x, y)`` under ``torch.compile``, cached
    per model and loss. Its gradient is taken by autograd, so AOTAutograd compiles the
    backward pass too (inductor fuses the norm, ReLU and pooling layers with theirs)."""
    per_model = _COMPILED_OUTER.setdefault(model, {})
    if loss_fn not in per_model:
        compile_settings()

        def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(model, params, x, y)

        per_model[loss_fn] = torch.compile(loss, dynamic=False)
    return per_model[loss_fn]


def real_batch_adjoint(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor,
                       *, chunk: int | None = None, precision: str = "fp32",
                       batched: bool = False, nhwc: bool = False, compiled: bool = False):
    """The ``outer`` of ``loss_fn`` (a mean over the real images): L and a_N, by chunks.

    ``batched``: the final weights are N stacked nets, evaluated together with vmap;
    the value is the sum of their losses. ``nhwc``: give the model its images
    channels-last (the same numbers; other kernels). ``compiled``: one net's loss
    through ``compiled_outer_loss`` (the same value and gradient to rounding).
    """
    n = real_x.shape[0]
    parts = outer_chunks(n, chunk)
    xs = [channels_last(real_x[p]) if nhwc else real_x[p] for p in parts]
    if batched:
        per_net = vmap(lambda params, x, y: loss_fn(model, params, x, y), in_dims=(0, None, None))

        def loss(params, x, y):
            return per_net(params, x, y).sum()
    elif compiled:
        loss = compiled_outer_loss(model, loss_fn)
    else:
        def loss(params, x, y):
            return loss_fn(model, params, x, y)

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        total, adjoint = None, None
        for part, x in zip(parts, xs):
            y = real_y[part]
            with _autocast(precision, real_x.device):
                value = loss(final, x, y)
            if len(parts) > 1:
                value = value * (x.shape[0] / n)  # a chunk's share of the batch mean
            grads = torch.autograd.grad(value, tuple(final.values()))
            value = value.detach()
            if total is None:
                total, adjoint = value, list(grads)
            else:
                total = total + value
                adjoint = [a + g for a, g in zip(adjoint, grads)]
        return total, tuple(adjoint)

    return outer


def looped_outer(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor,
                 **options):
    """The outer loss and a_N of N stacked nets, one net at a time (``options``: those of
    ``real_batch_adjoint``)."""
    one = real_batch_adjoint(model, loss_fn, real_x, real_y, **options)

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        total = torch.zeros((), dtype=real_x.dtype, device=real_x.device)
        adjoint = {k: torch.empty_like(v) for k, v in final.items()}
        for i in range(next(iter(final.values())).shape[0]):
            net = {k: v[i].detach().requires_grad_(True) for k, v in final.items()}
            value, grads = one(net)
            for k, g in zip(net, grads):
                adjoint[k][i] = g
            total += value
        return total, tuple(adjoint.values())

    return outer


def batched_outer(model: nn.Module, loss_fn: OuterLoss, real_x: Tensor, real_y: Tensor,
                  **options):
    if real_x.device.type == "cpu":
        return looped_outer(model, loss_fn, real_x, real_y, **options)
    options.pop("compiled", None)  # N nets stacked under vmap stay eager
    return real_batch_adjoint(model, loss_fn, real_x, real_y, batched=True, **options)


@contextlib.contextmanager
def _onednn(enabled: bool | None) -> Iterator[None]:
    """A block with oneDNN's CPU kernels on or off (None: as they are)."""
    if enabled is None:
        yield
        return
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved


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
        inner_onednn: oneDNN's convolutions on (True) or off (False) for one network's
            unroll, the outer loss keeping the setting it found; None leaves it.
        loss_fn: the default ``OuterLoss`` at the final weights, a mean over the real
            images (the batch may be chunked); each call may pass its own (the run's
            objective does: ``ddcli.core.objectives``).
        outer_chunk: real images per outer-loss chunk; None: what
            ``OUTER_ACTIVATION_BUDGET`` allows for this model; 0: the whole batch at once.
        precision: "fp32", or "bf16-outer" (the outer loss under bfloat16 autocast).
        real_nhwc: give a convolutional model its real batch channels-last (not when
            ``compiled``: inductor picks its own layouts).
        compiled: one net's outer loss and its gradient through ``torch.compile``
            (``compiled_outer_loss``); the step map's graph-free steps are compiled by
            ``StepFn(compiled=...)``, not here.
    """

    def __init__(self, step: StepFn, *, mode: str, batch: bool = True,
                 inner_threads: int | None = None, inner_onednn: bool | None = None,
                 loss_fn: OuterLoss = outer_loss, outer_chunk: int | None = None,
                 precision: str = "fp32", real_nhwc: bool = False,
                 compiled: bool = False) -> None:
        _check_precision(precision)
        self.step, self.mode, self.batch, self.compiled = step, mode, batch, compiled
        self.inner_threads, self.inner_onednn, self.loss_fn = inner_threads, inner_onednn, loss_fn
        self.outer_chunk, self.precision = outer_chunk, precision
        convolutional = any(isinstance(m, nn.Conv2d) for m in step.model.modules())
        self.real_nhwc = real_nhwc and not compiled and convolutional
        self.fallback_reason: str | None = None
        self._chunks: dict[tuple[int, ...], int] = {}

    @property
    def batched(self) -> bool:
        return self.batch and self.fallback_reason is None

    def chunk_for(self, real_x: Tensor) -> int | None:
        """Real images per outer-loss chunk for a batch shaped like ``real_x`` (None: all)."""
        if self.outer_chunk is not None:
            return self.outer_chunk or None
        shape = tuple(real_x.shape[1:])
        if shape not in self._chunks:  # one forward of one image, once per shape
            per_image = activation_floats(self.step.model, shape)
            self._chunks[shape] = max(1, OUTER_ACTIVATION_BUDGET // per_image)
        return self._chunks[shape]

    def __call__(self, inits: list[Params], learned: dict[str, Tensor], real_x: Tensor,
                 real_y: Tensor, *, labels: Tensor | None = None,
                 schedule: Schedule | None = None, window: tuple[int, int] | None = None,
                 loss_fn: OuterLoss | None = None) -> MetaGradient:
        model, loss_fn = self.step.model, loss_fn or self.loss_fn
        options = dict(chunk=self.chunk_for(real_x), precision=self.precision,
                       nhwc=self.real_nhwc and real_x.dim() == 4, compiled=self.compiled)

        one: list[OuterFn] = []  # every net's outer is the same function: build it once

        def outer_for(net: int | None) -> OuterFn:
            if net is None:
                return batched_outer(model, loss_fn, real_x, real_y, **options)
            if not one:
                one.append(real_batch_adjoint(model, loss_fn, real_x, real_y, **options))
            return one[0]

        return self.through(inits, learned, outer_for, labels=labels, schedule=schedule,
                            window=window)

    def through(self, inits: list[Params], learned: dict[str, Tensor],
                outer_for: Callable[[int | None], OuterFn], *, labels: Tensor | None = None,
                schedule: Schedule | None = None,
                window: tuple[int, int] | None = None) -> MetaGradient:
        """The meta-gradient of any outer loss at the unrolled weights, summed over nets.

        ``outer_for(i)`` is net i's ``OuterFn`` (its loss and a_N at its final weights);
        ``outer_for(None)`` that of all the nets stacked, the sum of their losses (used
        when they unroll together). The real-batch loss (``__call__``) and trajectory
        matching (``ddcli.core.trajectory``) are both this.
        """
        common = dict(labels=labels, schedule=schedule, mode=self.mode, window=window)
        if len(inits) > 1 and self.batched:
            try:
                # N nets make every op N times larger: worth all the threads
                # (docs/performance.md, "Several networks at once").
                return differentiate_unroll(self.step.batched_like(), outer_for(None),
                                            stack_params(inits), learned, **common)
            except (RuntimeError, NotImplementedError) as exc:
                # Nothing was changed (all of it is pure functions): loop from here on.
                self.fallback_reason = str(exc).strip().splitlines()[0][:200]
                warnings.warn(
                    f"this model can't be evaluated for several networks at once with "
                    f"torch.func.vmap ({self.fallback_reason}); looping over them instead",
                    RuntimeWarning, stacklevel=3,
                )
        total = None
        outside = torch.backends.mkldnn.enabled if self.inner_onednn is not None else None
        for i, params0 in enumerate(inits):
            outer = outer_for(i)

            def outer_as_before(final: Params, outer=outer):
                with _onednn(outside):  # the outer loss keeps the kernels it had
                    return outer(final)

            with _onednn(self.inner_onednn):
                part = differentiate_unroll(self.step, outer_as_before, params0, learned,
                                            inner_threads=self.inner_threads, **common)
            total = _add(total, part)
        return total


def meta_gradient(
    model: nn.Module, params0: Params, images: Tensor, labels: Tensor, raw_lrs: Tensor,
    real_x: Tensor, real_y: Tensor, *, mode: str = "full", loss_fn: OuterLoss = outer_loss,
    inner_threads: int | None = None, **options,
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's meta-gradient for one net: plain GD on the ordered steps, fixed labels.

    ``options``: ``inner_onednn``, ``outer_chunk``, ``precision`` and ``real_nhwc`` of
    ``NetsMetaGradient``.

    Returns:
        (loss, d loss / d images, d loss / d raw_lrs), all detached.

    Example:
        >>> loss, g_img, g_lr = meta_gradient(model, params, images, labels, raw_lrs,
        ...                                   x, y)  # doctest: +SKIP
    """
    nets = NetsMetaGradient(StepFn(model), mode=mode, batch=False, inner_threads=inner_threads,
                            loss_fn=loss_fn, **options)
    out = nets([params0], {"images": images, "raw_lrs": raw_lrs}, real_x, real_y,
               labels=labels)
    return out.loss, out.grads["images"], out.grads["raw_lrs"]
