"""Peak-memory estimates for ``dd distill --dry-run``, without training.

How they are estimated. The model runs once on PyTorch's ``meta`` device (shapes only,
no data, no arithmetic) under ``saved_tensors_hooks``, which report every tensor autograd
keeps for a backward pass. Counting the distinct storages gives

- ``step_graph``: what one inner step built with ``create_graph=True`` keeps, per
  network: its activations on the step's images (the inner batch's, where the set's
  inner loop draws minibatches), the backward pass's own saved tensors (with the
  update rule's new state: SGD's momentum, Adam's moments), and the new weights;
- ``outer_graph``: what the outer loss on a real batch keeps, per network, plus the
  gradient buffers its backward pass needs at once (twice its largest saved tensor).

One description drives it, the set's ``InnerLoop``: the update rule, the inner batch,
soft labels, and W, the steps differentiated (the window, else all T). The modes then
hold, per network evaluated at once (``nets``), plus one outer graph (on the CPU; one
per net elsewhere, see ``ddcli.core.meta_gradient``):

    full, stepwise   (W + 1) * step_graph                          (W graphs alive)
    recompute        (W + 1) * (|theta| + |state|) + 2 * step_graph  (one step's graph)
    --compile, one net: full and recompute alike
                     (W + 1) * (2 |theta| + |state|) + 2 * step_graph  (g_t kept too)

on top of what every mode holds: the real data on the device, the synthetic images,
rates and soft labels with their gradients and Adam moments, the initial weights and
the real batch. The steps before a window run without a graph and keep nothing. Not
counted: the framework itself (about 0.3-0.5 GB of RSS for torch on a CPU, a CUDA
context on a GPU), allocator slack and kernels' scratch space. ``bench/memory_modes.py``
prints these estimates next to measured peaks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks
from torch.func import functional_call
from torch.multiprocessing.reductions import StorageWeakRef

from ddcli.core.inner import InnerLoop
from ddcli.core.meta_gradient import meta_gradient
from ddcli.core.objectives import EXPERT_SEGMENT, REAL_BATCH
from ddcli.core.steps import StepFn, UpdateRule
from ddcli.init_modes import samples_nets

MODES = ("full", "stepwise", "recompute")


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one distillation process, in bytes, for each mode."""

    steps: int  # T, inner steps in the unroll
    nets: int  # networks whose graphs are alive at once in one process
    data: int  # real train and test sets on the device
    synthetic: int  # images, raw rates and soft labels, with gradients and Adam moments
    weights: int  # |theta| of one network
    real_batch: int
    step_graph: int  # one inner step's graph, one network
    outer_graph: int  # the outer loss's graph and backward buffers, one network
    common: int  # held whatever the mode: data, synthetic set, inits, real batch
    graphs: dict[str, int]  # what each mode adds for its graphs (all nets)
    differentiated: int = 0  # W, the steps one meta-gradient differentiates
    state: int = 0  # the update rule's state of one network (momentum, Adam's moments)

    @property
    def modes(self) -> dict[str, int]:
        """Estimated peak per memory mode."""
        return {mode: self.common + extra for mode, extra in self.graphs.items()}

    def to_dict(self) -> dict:
        return {**asdict(self), "modes": self.modes}


def estimate_memory(cfg, *, model: torch.nn.Module, train_size: int, test_size: int,
                    nproc: int = 1, device_type: str = "cpu",
                    inner: InnerLoop | None = None,
                    needs: str = REAL_BATCH) -> MemoryEstimate:
    """Estimate each memory mode's peak for ``cfg`` with ``model``'s architecture.

    Args:
        cfg: the run's DistillConfig.
        model: the network (only its structure and parameter shapes are used).
        train_size, test_size: images in the real train and test sets.
        nproc: processes the sampled networks are split over.
        device_type: "cpu", "cuda" or "mps"; batched nets take the outer loss one net
            at a time on the CPU and all together elsewhere (see ``ddcli.core.meta_gradient``).
        inner: the set's inner loop; default the one ``cfg`` describes (as distillation
            builds it).
        needs: what the objective's outer loss takes (``Objective.needs``): a real batch
            (a forward and backward of the net on it), or an expert segment (no real
            batch; a target's weights per net, and the distance's adjoint, in closed form).
    """
    spec = model.ddcli_spec
    c, hw, classes = spec["in_channels"], spec["image_size"], spec["num_classes"]
    n = classes * cfg.synth.images_per_class
    inner = inner or InnerLoop.from_config(cfg, n)
    total_steps, window = inner.length, inner.differentiated
    segment = needs == EXPERT_SEGMENT
    batch = 0 if segment else min(cfg.data.batch_size, train_size)
    elem = 4  # float32
    image = c * hw * hw * elem
    params = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
    weights = sum(v.numel() for v in params.values()) * elem
    state = sum(v.untyped_storage().nbytes() for v in inner.rule.init(params).values()
                if v.device.type == "meta")

    step_graph = _step_graph_bytes(model, inner.rule, params, inner.batch_size, c, hw,
                                   classes, soft=inner.soft_labels)
    if segment:  # theta_N - target, scaled: the adjoint, and one temporary of its size
        outer_graph = 2 * weights
    else:
        outer_saved, outer_largest = _outer_graph_bytes(model, params, batch, c, hw, classes)
        outer_graph = outer_saved + 2 * outer_largest

    nets = 1
    if samples_nets(cfg.init.mode) and cfg.run.batch_nets:
        nets = math.ceil(cfg.init.sample_n_nets / max(1, nproc))
    data = (train_size + test_size) * (image + 8)  # images, and int64 labels
    slots = inner.steps * inner.images_per_step
    soft = slots * classes * elem if inner.soft_labels else 0
    synthetic = 4 * (slots * image + total_steps * elem + soft)  # value, grad, Adam m and v
    held = weights + state + (weights if segment else 0)  # per net: start (+ target)
    common = data + synthetic + nets * held + batch * image
    outer = (1 if device_type == "cpu" else nets) * outer_graph
    unrolls = {
        "full": (window + 1) * step_graph,
        "stepwise": (window + 1) * step_graph,
        "recompute": (window + 1) * (weights + state) + 2 * step_graph,
    }
    if cfg.run.compile and nets == 1:
        # --compile on one net: full and recompute both run the compiled reverse loop,
        # which keeps (theta_t, s_t, g_t) and one step's work at a time (unroll.py)
        unrolls["full"] = unrolls["recompute"] = ((window + 1) * (2 * weights + state)
                                                  + 2 * step_graph)
    return MemoryEstimate(
        steps=total_steps, nets=nets, data=data, synthetic=synthetic, weights=weights,
        real_batch=batch * image, step_graph=step_graph, outer_graph=outer_graph,
        common=common, graphs={mode: nets * unrolls[mode] + outer for mode in MODES},
        differentiated=window, state=state,
    )


def _counting(exclude: list[torch.Tensor]):
    """saved_tensors_hooks that record distinct storages, minus those of ``exclude``."""
    skip = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    return saved_tensors_hooks(pack, lambda t: t), seen


def _step_graph_bytes(model, rule: UpdateRule, params, n, c, hw, classes, *,
                      soft: bool) -> int:
    """One step of ``rule`` on n images: what its graph keeps, with its new weights (its
    weights and state enter as leaves, as a step inside an unroll sees them)."""
    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state = {k: v.clone().requires_grad_(True) if v.device.type == "meta" else v
             for k, v in rule.init(theta).items()}
    x = torch.empty(n, c, hw, hw, device="meta", requires_grad=True)
    y = (torch.empty(n, classes, device="meta", requires_grad=True) if soft
         else torch.zeros(n, dtype=torch.long, device="meta"))
    lr = torch.empty((), device="meta", requires_grad=True)
    hooks, seen = _counting([*theta.values(), *state.values(), x, y, lr])
    with hooks:
        new, _ = StepFn(model, rule)(theta, state, x, y, lr, create_graph=True)
    # The new state needs no count of its own: the step that made it saved it (SGD's
    # theta - eta * b keeps b, Adam's keeps m and v), and the next step only scales it.
    return sum(seen.values()) + sum(v.untyped_storage().nbytes() for v in new.values())


def _outer_graph_bytes(model, params, batch, c, hw, classes) -> tuple[int, int]:
    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    x = torch.empty(batch, c, hw, hw, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    hooks, seen = _counting([*theta.values(), x])
    with hooks:
        F.cross_entropy(functional_call(model, theta, (x,)), y)
    return sum(seen.values()), max(seen.values(), default=0)


def warm_framework(model: torch.nn.Module) -> None:
    """Run what a distillation run runs, tiny: one meta-gradient on 2 images and an Adam step.

    Importing and first using these pulls in a good part of a CPU process's RSS (Adam's
    first step alone imports about 150 MB of torch modules); after this call the
    process's RSS stands for a training process's fixed part.
    """
    spec = model.ddcli_spec
    c, hw, classes = spec["in_channels"], spec["image_size"], spec["num_classes"]
    params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    images = torch.zeros(1, 2, c, hw, hw, requires_grad=True)
    labels = torch.zeros(1, 2, dtype=torch.long)
    raw = torch.zeros(1, requires_grad=True)
    _, g_img, g_lr = meta_gradient(model, params, images, labels, raw, images[0].detach(),
                                   labels[0] % classes)
    images.grad, raw.grad = g_img, g_lr
    torch.optim.Adam([images, raw]).step()


def format_bytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"
