"""Many networks at once: replay and SGD training of N nets through one step map.

Evaluating 20 nets should not cost 20 single-net runs where batching can avoid it. The
routines here take a list of N inits and run them through ``ddcli.core.unroll`` with the
step map of one net (a loop) or of N stacked nets (``StepFn(batched=True)``, vmapped).
Training images are either shared by all nets or given per net (a leading N dim, for
baselines that draw one set per net). Nets go in groups sized to an activation budget,
so wide models (ConvNet) run in small groups instead of running out of memory.

The loop is the reference the tests hold the vmap path to, the fallback for models vmap
can't run, and, on CPUs, the faster choice for large batches: ``batched=None`` (auto)
uses vmap everywhere on GPUs, but on a CPU only for the replay's small GD steps. There
vmap's batched convolutions leave non-contiguous activations that make pooling and ReLU
slower than N plain calls (figures in docs/benchmarks.md, ``bench/eval_speed.py``).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddcli.core.metrics import ACTIVATION_BUDGET, activation_floats, correct_counts
from ddcli.core.params import Params, detached, stack_params
from ddcli.core.inner import InnerLoop
from ddcli.core.schedules import EpochSchedule
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import GD, SGD, StepFn, inner_loss
from ddcli.core.unroll import unroll

_VMAP_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
Progress = Callable[[int, int], None]  # (done, total): the long routines' progress


def supports_vmap(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether ``vmap`` runs this model's gradient and forward (cached per model)."""
    shape = tuple(input_shape)
    known = _VMAP_OK.setdefault(model, {})
    if shape not in known:
        params = detached(dict(model.named_parameters()))
        stacked = stack_params([params, params])
        p = next(model.parameters())
        x = torch.zeros(2, *shape, device=p.device, dtype=p.dtype)
        y = torch.zeros(2, dtype=torch.long, device=x.device)

        def loss(ps, xx, yy):
            return inner_loss(functional_call(model, ps, (xx,)), yy)

        try:
            vmap(grad(loss), in_dims=(0, None, None))(stacked, x, y)
            vmap(lambda ps, xx: functional_call(model, ps, (xx,)), in_dims=(0, None))(stacked, x)
            known[shape] = True
        except Exception:  # any failure inside vmap means: run the nets one by one
            known[shape] = False
    return known[shape]


def use_vmap(batched: bool | None, model: nn.Module, input_shape: Sequence[int],
             work: str) -> bool:
    """Resolve ``batched`` for ``work``: "steps" (replay GD), "sgd" or "inference"."""
    if batched is False:
        return False
    if batched is None and next(model.parameters()).device.type == "cpu" and work != "steps":
        return False  # on CPUs a loop beats vmap for large batches (module docstring)
    return supports_vmap(model, input_shape)


def _groups(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _group_size(act: int, rows: int, n: int) -> int:
    # x3: a training step holds the forward activations, their gradients and the input.
    return max(1, min(n, ACTIVATION_BUDGET // max(1, 3 * act * rows)))


def replay_accuracies(
    model: nn.Module,
    inits: Sequence[Params],
    images: Tensor,
    labels: Tensor,
    lrs: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    at: Sequence[int] | None = None,
    batched: bool | None = None,
    inner: InnerLoop | None = None,
    seed: int = 0,
) -> Tensor:
    """Replay the learned GD steps from each init and measure test accuracy along the way.

    Args:
        model: the network structure (weights come from ``inits``).
        inits: N initial weight dicts.
        images: (S, n, C, H, W) shared by every net, or (N, S, n, C, H, W), one set per net.
        labels: (S, n) synthetic labels, or (S, n, classes) soft labels.
        lrs: (T,) learning rates (after ``lrs_from_raw``); step t uses images[t mod S].
        test_x, test_y: the evaluation data, on the model's device.
        at: GD step counts in 0..T after which to measure; default ``[T]``.
        batched: True: vmap over the nets; False: one net at a time; None (default):
            ``use_vmap`` decides per part (GD steps, test inference) and device.
        inner: the set's inner loop (rule, schedule); default the paper's: plain GD on
            the ordered steps. Replays never augment.
        seed: seeds the inner loop's minibatches (pool sets), the same for every net.

    Returns:
        Accuracies, float64 of shape (len(at), N).
    """
    images, lrs = images.detach(), lrs.detach()
    per_net = images.dim() == 6
    steps = images.shape[1] if per_net else images.shape[0]
    inner = inner or InnerLoop(steps=steps, images_per_step=images.shape[-4],
                               length=lrs.shape[0], rule=GD())
    step, seed = inner.step_fn(model), derive_seed(seed, "replay-schedule")
    total = lrs.shape[0]
    at = list(at) if at is not None else [total]
    if any(not 0 <= t <= total for t in at):
        raise ValueError(f"checkpoints must be in 0..{total}, got {at}")
    out = torch.zeros(len(at), len(inits), dtype=torch.float64)
    rows = {t: [i for i, a in enumerate(at) if a == t] for t in set(at)}
    last, n_test = max(at), max(1, test_x.shape[0])
    act = activation_floats(model, images.shape[-3:])
    vmap_infer = use_vmap(batched, model, images.shape[-3:], "inference")
    if not use_vmap(batched, model, images.shape[-3:], "steps"):
        schedule = inner.schedule(seed)
        for j, p0 in enumerate(inits):
            def measure(t: int, params: Params, j: int = j) -> None:
                for r in rows.get(t, ()):
                    count = correct_counts(model, params, test_x, test_y, stacked=False,
                                           chunk=max(1, ACTIVATION_BUDGET // act))
                    out[r, j] = int(count) / n_test

            unroll(step, p0, images[j] if per_net else images, labels, lrs,
                   create_graph=False, schedule=schedule, stop=last, observe=measure)
        return out
    many = step.batched_like(per_net_data=per_net, per_net_targets=False)
    for group in _groups(len(inits), _group_size(act, images.shape[-4], len(inits))):
        cols = slice(group.start, group.stop)

        def measure(t: int, params: Params) -> None:
            for r in rows.get(t, ()):
                counts = correct_counts(model, params, test_x, test_y, vmapped=vmap_infer)
                out[r, cols] = counts.cpu().double() / n_test

        unroll(many, stack_params([inits[j] for j in group], test_x.device),
               images[cols] if per_net else images, labels, lrs, create_graph=False,
               schedule=inner.schedule(seed, per_net=per_net), stop=last,
               observe=measure)
    return out


def train_accuracies(
    model: nn.Module,
    inits: Sequence[Params],
    x: Tensor,
    y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    batched: bool | None = None,
    **train: Any,
) -> Tensor:
    """Train each init on a small image set with SGD (``train_nets``), then test it.

    Args:
        batched: True: vmap over the nets; False: one net at a time; None (default):
            ``use_vmap`` decides per part (SGD, test inference) and device.
        **train: ``train_nets``' settings (lr, epochs, seeds, batch_size, ...).

    Returns:
        Final test accuracies, float64 of shape (N,).
    """
    shape = x.shape[-3:]
    n_test = max(1, test_x.shape[0])
    out = torch.zeros(len(inits), dtype=torch.float64)
    vmap_infer = use_vmap(batched, model, shape, "inference")
    for group, params in train_nets(model, inits, x, y,
                                    batched=use_vmap(batched, model, shape, "sgd"), **train):
        counts = correct_counts(model, params, test_x, test_y, vmapped=vmap_infer)
        out[group.start : group.stop] = counts.cpu().double() / n_test
    return out


def train_nets(
    model: nn.Module,
    inits: Sequence[Params],
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    epochs: int,
    seeds: Sequence[int],
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    lr_decay: float = 0.1,
    decay_epoch: int | None = None,
    reset_momentum: bool = False,
    batched: bool = True,
    augment: Callable[[Tensor, int], Tensor] | None = None,
    progress: Progress | None = None,
    compiled: bool = False,
) -> Iterator[tuple[range, Params]]:
    """Train each init on a small image set with SGD; yield the trained weights by group.

    Each epoch every net visits the images in its own shuffled order (net j's order is
    drawn from ``torch.Generator().manual_seed(seeds[j])``), in batches of
    ``batch_size``; SGD has momentum and weight decay exactly as ``torch.optim.SGD``
    (the ``SGD`` rule of the step map), and the lr is multiplied by ``lr_decay`` once
    ``decay_epoch`` epochs are done (default half; 0.1: the DC/DSA/MTT protocol). With
    ``reset_momentum`` the momentum starts again from zero there, as a new
    ``torch.optim.SGD`` does (DC's code makes one at the decay).

    Args:
        x: (M, C, H, W) shared by every net, or (N, M, C, H, W), one set per net.
        y: (M,) or (N, M) labels matching ``x`` (or soft labels with a class dim).
        batched: vmap over groups of nets; False trains one net at a time.
        augment: ``augment(x, seed)`` on every batch (``DSA``, ``DCAugment``), net j's
            draws seeded by (seeds[j], step), so a net trains the same batched or alone.
        progress: called as ``progress(done, total)`` in net-epochs, once an epoch.
        compiled: one net at a time, each step through ``torch.compile``
            (``ddcli.core.steps.compiled_loss_grads``); vmapped groups stay eager.

    Yields:
        (net indices, their weights stacked as (G, ...)), in order.
    """
    x, y = x.detach(), y.detach()
    per_net = x.dim() == 5
    m = x.shape[1] if per_net else x.shape[0]
    rates = [float(lr), float(lr) * float(lr_decay)]  # floats: torch.optim.SGD's arithmetic, bit for bit
    one = StepFn(model, SGD(momentum=momentum, weight_decay=weight_decay), compiled=compiled)
    per_epoch, total = -(-m // batch_size), len(inits) * epochs

    def epochs_done(first: int, nets: int):
        """observe(t, params) that reports each finished epoch of ``nets`` nets."""
        if progress is None:
            return None
        return lambda t, _: (t and t % per_epoch == 0 and
                             progress(first * epochs + nets * (t // per_epoch), total))

    def run(step, p0, xs, ys, schedule, observe) -> Params:
        if not reset_momentum:
            return unroll(step, p0, xs, ys, rates, create_graph=False, schedule=schedule,
                          observe=observe).params
        # Two runs of the same schedule: the second starts with a fresh rule state.
        first = unroll(step, p0, xs, ys, rates, create_graph=False, schedule=schedule,
                       stop=schedule.decay_step, observe=observe).params
        return unroll(step, first, xs, ys, rates, create_graph=False, schedule=schedule,
                      start=schedule.decay_step, observe=observe).params

    if not batched:
        for j, p0 in enumerate(inits):
            schedule = EpochSchedule(m, batch_size, epochs, [seeds[j]], batched=False,
                                     augment=augment, decay_epoch=decay_epoch)
            final = run(one, p0, x[j] if per_net else x, y[j] if per_net else y, schedule,
                        epochs_done(j, 1))
            yield range(j, j + 1), {k: v[None] for k, v in final.items()}
        return
    act = activation_floats(model, x.shape[-3:])
    many = one.batched_like(per_net_data=True)  # every net draws its own batches
    for group in _groups(len(inits), _group_size(act, min(batch_size, m), len(inits))):
        schedule = EpochSchedule(m, batch_size, epochs, [seeds[j] for j in group],
                                 batched=True, per_net=per_net, augment=augment,
                                 decay_epoch=decay_epoch)
        xg, yg = (x[group.start:group.stop], y[group.start:group.stop]) if per_net else (x, y)
        final = run(many, stack_params([inits[j] for j in group], x.device), xg, yg, schedule,
                    epochs_done(group.start, len(group)))
        yield group, final
