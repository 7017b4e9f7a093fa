"""Many networks at once: ``torch.func.vmap`` over stacked parameters, or a loop.

Evaluating 20 nets should not cost 20 single-net runs where batching can avoid it. The
routines here take a list of N inits and stack them into one dict of (N, ...) tensors:
GD and SGD steps run through ``vmap(grad(loss))`` and test inference through
``vmap(functional_call)`` under ``no_grad``. Training images are either shared by all
nets (vmapped with ``in_dims=None``) or given per net (a leading N dim, for baselines
that draw one set per net). Nets go in groups sized to an activation budget, so wide
models (ConvNet) run in small groups instead of running out of memory.

Every routine has a looped twin: one net at a time with plain autograd and
``torch.optim.SGD``. It is the reference the tests hold the vmap path to, the fallback
for models vmap can't run, and, on CPUs, the faster choice for large batches:
``batched=None`` (auto) uses vmap everywhere on GPUs, but on a CPU only for the replay's
small GD steps. There vmap's batched convolutions leave non-contiguous activations that
make pooling and ReLU slower than N plain calls (``bench/eval_speed.py``, 20 LeNets, one
thread: 1.3x slower on the 10k test images, 1.9x slower for 300 epochs of SGD on 100
images, 1.1x faster for the replay's 10-image GD steps).
"""

from __future__ import annotations

import copy
import weakref
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ddcli.core.unroll import Params, gd_step

# Floats of activations one call may hold (512 MB in float32).
ACTIVATION_BUDGET = 2**27

_VMAP_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stack_params(inits: Sequence[Params], device: torch.device | None = None) -> Params:
    """N param dicts -> one dict of (N, ...) tensors, detached."""
    return {k: torch.stack([p[k].detach() for p in inits]).to(device) for k in inits[0]}


def activation_floats(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floats of layer outputs for one input sample (sum over leaf modules)."""
    total = 0

    def hook(_module, _inputs, out):
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


def supports_vmap(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether ``vmap`` runs this model's gradient and forward (cached per model)."""
    shape = tuple(input_shape)
    known = _VMAP_OK.setdefault(model, {})
    if shape not in known:
        params = {k: v.detach() for k, v in model.named_parameters()}
        stacked = stack_params([params, params])
        p = next(model.parameters())
        x = torch.zeros(2, *shape, device=p.device, dtype=p.dtype)
        y = torch.zeros(2, dtype=torch.long, device=x.device)
        try:
            vmap(grad(_loss_fn(model)), in_dims=(0, None, None))(stacked, x, y)
            _forward_fn(model)(stacked, x)
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


def _loss_fn(model: nn.Module):
    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def _forward_fn(model: nn.Module):
    return vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))


def _groups(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _group_size(act: int, rows: int, n: int) -> int:
    # x3: a training step holds the forward activations, their gradients and the input.
    return max(1, min(n, ACTIVATION_BUDGET // max(1, 3 * act * rows)))


@torch.no_grad()
def correct_counts(
    model: nn.Module, params: Params, x: Tensor, y: Tensor, act: int, *, vmapped: bool = True
) -> Tensor:
    """Correct predictions of each stacked net on (x, y): shape (N,), int64.

    Batched over the test images in chunks of the activation budget, without autograd;
    ``vmapped`` also runs the N nets in one call, else one after another.
    """
    n = next(iter(params.values())).shape[0]
    if not vmapped:
        return torch.tensor([
            _correct_one(model, {k: v[j] for k, v in params.items()}, x, y, act) for j in range(n)
        ], device=x.device)
    chunk = max(1, ACTIVATION_BUDGET // (act * n))
    forward = _forward_fn(model)
    correct = torch.zeros(n, dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        logits = forward(params, x[start : start + chunk])  # (N, B, classes)
        correct += (logits.argmax(-1) == y[start : start + chunk]).sum(-1)
    return correct


@torch.no_grad()
def _correct_one(model: nn.Module, params: Params, x: Tensor, y: Tensor, act: int) -> int:
    chunk, correct = max(1, ACTIVATION_BUDGET // act), 0
    for start in range(0, x.shape[0], chunk):
        logits = functional_call(model, params, (x[start : start + chunk],))  # (B, classes)
        correct += int((logits.argmax(1) == y[start : start + chunk]).sum())
    return correct


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
) -> Tensor:
    """Replay the learned GD steps from each init and measure test accuracy along the way.

    Args:
        model: the network structure (weights come from ``inits``).
        inits: N initial weight dicts.
        images: (S, n, C, H, W) shared by every net, or (N, S, n, C, H, W), one set per net.
        labels: (S, n) synthetic labels.
        lrs: (T,) learning rates (after softplus); step t uses images[t mod S].
        test_x, test_y: the evaluation data, on the model's device.
        at: GD step counts in 0..T after which to measure; default ``[T]``.
        batched: True: vmap over the nets; False: one net at a time; None (default):
            ``use_vmap`` decides per part (GD steps, test inference) and device.

    Returns:
        Accuracies, float64 of shape (len(at), N).
    """
    images, lrs = images.detach(), lrs.detach()
    total = lrs.shape[0]
    at = list(at) if at is not None else [total]
    if any(not 0 <= t <= total for t in at):
        raise ValueError(f"checkpoints must be in 0..{total}, got {at}")
    per_net = images.dim() == 6
    steps = images.shape[1] if per_net else images.shape[0]
    out = torch.zeros(len(at), len(inits), dtype=torch.float64)
    rows = {t: [i for i, a in enumerate(at) if a == t] for t in set(at)}
    last = max(at)
    n_test = max(1, test_x.shape[0])
    act = activation_floats(model, images.shape[-3:])
    vmap_infer = use_vmap(batched, model, images.shape[-3:], "inference")
    if not use_vmap(batched, model, images.shape[-3:], "steps"):
        for j, p0 in enumerate(inits):
            params = {k: v.detach() for k, v in p0.items()}
            net_images = images[j] if per_net else images
            for t in range(last + 1):
                for r in rows.get(t, ()):
                    out[r, j] = _correct_one(model, params, test_x, test_y, act) / n_test
                if t < last:
                    s = t % steps
                    live = {k: v.requires_grad_(True) for k, v in params.items()}
                    new = gd_step(model, live, net_images[s], labels[s], lrs[t], create_graph=False)
                    params = {k: v.detach() for k, v in new.items()}
        return out
    step_grad = vmap(grad(_loss_fn(model)), in_dims=(0, 0 if per_net else None, None))
    for group in _groups(len(inits), _group_size(act, images.shape[-4], len(inits))):
        params = stack_params([inits[j] for j in group], test_x.device)
        net_images = images[group.start : group.stop] if per_net else images
        cols = slice(group.start, group.stop)
        with torch.no_grad():
            for t in range(last + 1):
                for r in rows.get(t, ()):
                    counts = correct_counts(model, params, test_x, test_y, act,
                                            vmapped=vmap_infer)
                    out[r, cols] = counts.cpu().double() / n_test
                if t < last:
                    s = t % steps
                    # (G, n, C, H, W) per net, or (n, C, H, W) shared
                    x = net_images[:, s] if per_net else net_images[s]
                    g = step_grad(params, x, labels[s])
                    params = {k: params[k] - lrs[t] * g[k] for k in params}
    return out


def train_accuracies(
    model: nn.Module,
    inits: Sequence[Params],
    x: Tensor,
    y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    lr: float,
    epochs: int,
    seeds: Sequence[int],
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batched: bool | None = None,
) -> Tensor:
    """Train each init on a small image set with SGD (``train_nets``), then test it.

    Args:
        batched: True: vmap over the nets; False: one net at a time; None (default):
            ``use_vmap`` decides per part (SGD, test inference) and device.

    Returns:
        Final test accuracies, float64 of shape (N,).
    """
    shape = x.shape[-3:]
    n_test = max(1, test_x.shape[0])
    out = torch.zeros(len(inits), dtype=torch.float64)
    act = activation_floats(model, shape)
    vmap_infer = use_vmap(batched, model, shape, "inference")
    for group, params in train_nets(
        model, inits, x, y, lr=lr, epochs=epochs, seeds=seeds, batch_size=batch_size,
        momentum=momentum, weight_decay=weight_decay,
        batched=use_vmap(batched, model, shape, "sgd"),
    ):
        counts = correct_counts(model, params, test_x, test_y, act, vmapped=vmap_infer)
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
    batched: bool = True,
) -> Iterator[tuple[range, Params]]:
    """Train each init on a small image set with SGD; yield the trained weights by group.

    Each epoch every net visits the images in its own shuffled order (net j's order is
    drawn from ``torch.Generator().manual_seed(seeds[j])``), in batches of
    ``batch_size``; SGD has momentum and weight decay like ``torch.optim.SGD``, and the
    lr is halved once half the epochs are done.

    Args:
        x: (M, C, H, W) shared by every net, or (N, M, C, H, W), one set per net.
        y: (M,) or (N, M) labels matching ``x``.
        batched: vmap over groups of nets; False trains one ``nn.Module`` copy at a time
            with ``torch.optim.SGD``.

    Yields:
        (net indices, their weights stacked as (G, ...)), in order.
    """
    x, y = x.detach(), y.detach()
    per_net = x.dim() == 5
    m = x.shape[1] if per_net else x.shape[0]
    half = max(1, epochs // 2)
    if not batched:
        for j, p0 in enumerate(inits):
            net = copy.deepcopy(model)
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.copy_(p0[name])
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)
            gen = torch.Generator().manual_seed(seeds[j])
            xj, yj = (x[j], y[j]) if per_net else (x, y)
            for epoch in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr if epoch < half else lr / 2
                perm = torch.randperm(m, generator=gen).to(x.device)
                for start in range(0, m, batch_size):
                    idx = perm[start : start + batch_size]
                    loss = F.cross_entropy(net(xj[idx]), yj[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            yield range(j, j + 1), {k: v.detach()[None] for k, v in net.named_parameters()}
        return
    act = activation_floats(model, x.shape[-3:])
    step_grad = vmap(grad(_loss_fn(model)), in_dims=(0, 0, 0))
    for group in _groups(len(inits), _group_size(act, min(batch_size, m), len(inits))):
        params = stack_params([inits[j] for j in group], x.device)
        bufs: Params | None = None
        gens = [torch.Generator().manual_seed(seeds[j]) for j in group]
        rows = torch.arange(len(group), device=x.device)[:, None]  # (G, 1)
        xg, yg = (x[group.start : group.stop], y[group.start : group.stop]) if per_net else (x, y)
        with torch.no_grad():
            for epoch in range(epochs):
                rate = lr if epoch < half else lr / 2
                perms = torch.stack([torch.randperm(m, generator=g) for g in gens]).to(x.device)
                for start in range(0, m, batch_size):
                    idx = perms[:, start : start + batch_size]  # (G, B)
                    xb, yb = (xg[rows, idx], yg[rows, idx]) if per_net else (xg[idx], yg[idx])
                    g = step_grad(params, xb, yb)  # (G, ...) per parameter
                    # as torch.optim.SGD: d = g + wd p; buf = d, then momentum buf + d; p -= lr buf
                    d = {k: g[k] + weight_decay * params[k] for k in params}
                    bufs = d if bufs is None else {k: momentum * bufs[k] + d[k] for k in params}
                    params = {k: params[k] - rate * bufs[k] for k in params}
        yield group, params
