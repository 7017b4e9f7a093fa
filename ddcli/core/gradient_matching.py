"""Gradient matching (DC, Zhao, Mopuri & Bilen, ICLR 2021; DSA, Zhao & Bilen, ICML 2021):
``--objective gradient``.

Notation. theta is a fresh random network, R_c a batch of real images of class c
(``--batch-size`` of them), S_c the synthetic images of class c, and A_c one DSA
transform drawn for class c, applied Siamese to R_c and S_c (DSA; none for DC). The
gradients of the training loss on each side are

    g_R = d/dtheta CE(f(A_c(R_c); theta), c)      (a constant: no graph)
    g_S = d/dtheta CE(f(A_c(S_c); theta), c)      (with its graph, create_graph)

and the loss of one network sums, over classes and over the network's weight tensors,
DC's layer distance ("ours" in its code): each tensor's gradient is read as one row per
output unit (a conv's (out, in * kh * kw), a linear layer's (out, in)), and

    D(g_R, g_S) = sum_rows ( 1 - <r, s> / (|r| |s| + 1e-6) ).

One-dimensional tensors (biases, the norms' scales and shifts) count zero, as in DC.
The gradient with respect to the images is the double backward through g_S.

DC's loop. DC and DSA take a fresh network for each of their iterations and match on it
for ``outer_loop`` rounds, each round one update of the images; between rounds they
train the network on the synthetic set for ``inner_loop`` epochs (SGD at ``lr_net``,
batches of 256, DSA's augmentation per image when DSA is on). Here one round is one
iteration: iteration i matches on a fresh network (``--init-mode random``) when
i % outer_loop == 0, and otherwise on the previous iteration's network after those
epochs on the set as it now is (after the previous update), which is DC's order.
The networks live in the run's ``objective_state`` between iterations, so a checkpoint
holds them and a resumed run is bit-exact. The defaults are DC's ``get_loops``: 1 and 1
at 1 image per class (every match on a fresh network), 10 and 50 at 10, ..., 50 and 10
at 50. The training rate is ``--step-lr`` (DC's ``lr_net``, 0.01). The inner rates are
not learned (``learns_rates = False``): ``dd eval`` trains fresh nets on the set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ddcli.core.augment import DSA
from ddcli.core.distribution import class_images, matching_augment
from ddcli.core.meta_gradient import NetsMetaGradient, _autocast, channels_last
from ddcli.core.objectives import CLASS_BATCHES, Objective, OuterBatch, register_objective
from ddcli.core.params import Params
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import compiled_loss_grads
from ddcli.core.unroll import MetaGradient
from ddcli.errors import ConfigError

EPS = 1e-6  # DC's, in the denominator of the cosine
#: DC's get_loops: images per class -> (outer_loop, inner_loop)
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
TRAIN_BATCH = 256  # DC's batch_train


def layer_distance(real: Tensor, syn: Tensor) -> Tensor:
    """DC's distance between two gradients of one weight tensor (module docstring's D).

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> float(layer_distance(g, g)), float(layer_distance(g, -g))
        (0.0, 4.0)
    """
    if real.dim() <= 1:
        return real.new_zeros(())
    r, s = real.flatten(1), syn.flatten(1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + EPS)
    return (1 - cos).sum()


def _labels(x: Tensor, label: int) -> Tensor:
    return torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)


def _weight_gradients(model: nn.Module, params: Params, x: Tensor, y: Tensor, *,
                      create_graph: bool) -> list[Tensor]:
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    return list(torch.autograd.grad(loss, list(params.values()), create_graph=create_graph))


def gradient_matching_loss(model: nn.Module, params: Params, synthetic: list[Tensor],
                           real: list[Tensor], *, augment: DSA | None = None, seed: int = 0,
                           nhwc: bool = False, precision: str = "fp32",
                           compiled: bool = False, images: Tensor | None = None):
    """Gradient matching under one network: the module docstring's loss, class by class.

    ``params`` are the network's weights (any tensors; they are detached here).
    ``augment`` (a Siamese ``DSA``) transforms both sides of class c with the seed
    ``derive_seed(seed, "dsa", c)``. ``nhwc``: the real side channels-last (a CPU
    speed-up; the same numbers to float rounding). ``precision`` "bf16-outer": the real
    side's gradient under bfloat16 autocast; ``compiled``: under ``torch.compile``
    (``ddcli.core.steps.compiled_loss_grads``). With ``images`` (the leaf ``synthetic`` was
    sliced from), returns ``(loss, d loss / d images)``, each class's graph freed before
    the next is built; without, returns the loss with its graph.
    """
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    total, grad = None, None
    for c, (syn, x) in enumerate(zip(synthetic, real)):
        if augment is not None:
            s = derive_seed(seed, "dsa", c)
            x, syn = augment(x, s), augment(syn, s)
        with _autocast(precision, x.device):
            if compiled:
                target = list(compiled_loss_grads(model)(theta, x, _labels(x, c)).values())
            else:
                target = _weight_gradients(model, theta, channels_last(x) if nhwc else x,
                                           _labels(x, c), create_graph=False)
        ours = _weight_gradients(model, theta, syn, _labels(syn, c), create_graph=True)
        term = sum(layer_distance(r.detach(), s) for r, s in zip(target, ours))
        if images is not None:
            (g,) = torch.autograd.grad(term, images)
            grad = g if grad is None else grad + g
            term = term.detach()
        total = term if total is None else total + term
    return total if images is None else (total, grad)


class GradientMatching(Objective):
    """DC's (no augmentation) or DSA's (Siamese DSA) objective: ``outer_loop`` rounds per
    fresh network, ``inner_loop`` epochs of training on the set between rounds."""

    kind = "gradient"
    needs = CLASS_BATCHES
    learns_rates = False
    unrolls = False

    def __init__(self, num_classes: int, augment: DSA | None = None, *,
                 compiled: bool = False, outer_loop: int = 1, inner_loop: int = 1,
                 lr_net: float = 0.01) -> None:
        self.num_classes, self.compiled = num_classes, compiled
        self.outer_loop, self.inner_loop, self.lr_net = outer_loop, inner_loop, lr_net
        self.augment = dataclasses.replace(augment, siamese=True) if augment else None
        # DSA trains its networks on the set with per-image augmentation
        self.train_augment = dataclasses.replace(augment, siamese=False) if augment else None

    def networks(self, inits: list[Params], images: Tensor, batch: OuterBatch,
                 model: nn.Module) -> list[Params]:
        """The iteration's networks: ``inits`` at a round's start, else the previous
        iteration's networks (from ``batch.memory``) trained on the set as it is now."""
        if batch.iteration % self.outer_loop == 0:
            return inits
        memory = batch.memory if batch.memory is not None else {}
        if memory.get("iteration") != batch.iteration - 1:
            raise RuntimeError(f"gradient matching lost its networks: iteration "
                               f"{batch.iteration} continues iteration {batch.iteration - 1}'s, "
                               f"but the run holds those of {memory.get('iteration')}")
        steps, n = images.shape[:2]  # every step's slots are class-major (class_images)
        x = images.detach().flatten(0, 1)
        y = torch.arange(self.num_classes, device=x.device).repeat_interleave(
            n // self.num_classes).repeat(steps)
        return [self.train(model, {k: v.to(images.device) for k, v in p.items()}, x, y,
                           derive_seed(batch.seed, "gm-train", i))
                for i, p in enumerate(memory["nets"])]

    def train(self, model: nn.Module, params: Params, x: Tensor, y: Tensor,
              seed: int) -> Params:
        """``inner_loop`` epochs of SGD (``lr_net``) on (x, y) in shuffled batches of 256,
        DSA per image when DSA is on: DC's ``epoch('train', ...)`` on the synthetic set."""
        g = torch.Generator().manual_seed(seed)
        grads_of = compiled_loss_grads(model) if self.compiled else None
        for epoch in range(self.inner_loop):
            order = torch.randperm(x.shape[0], generator=g).to(x.device)
            for start in range(0, x.shape[0], TRAIN_BATCH):
                idx = order[start:start + TRAIN_BATCH]
                xb, yb = x[idx], y[idx]
                if self.train_augment is not None:
                    xb = self.train_augment(xb, derive_seed(seed, "dsa", epoch, start))
                if grads_of is not None:
                    grads = list(grads_of(params, xb, yb).values())
                else:
                    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                    grads = _weight_gradients(model, leaves, xb, yb, create_graph=False)
                params = {k: (v - self.lr_net * g).detach()
                          for (k, v), g in zip(params.items(), grads)}
        return params

    def meta_gradient(self, nets: NetsMetaGradient, inits: list[Params],
                      learned: dict[str, Tensor], batch: OuterBatch, **plan: Any) -> MetaGradient:
        model = nets.step.model
        images = learned["images"].detach().requires_grad_(True)  # (S, n, C, H, W)
        synthetic = class_images(images, self.num_classes)
        current = self.networks(inits, images, batch, model)
        # Channels-last helps fp32 eager kernels on a CPU only; bf16 ones it slows (1.5x
        # on CIFAR-10 ConvNet-128, docs/performance.md).
        nhwc = nets.real_nhwc and nets.precision == "fp32" and not self.compiled
        loss, grad = None, None
        for params in current:
            value, g = gradient_matching_loss(
                model, params, synthetic, batch.per_class, augment=self.augment,
                seed=batch.seed, nhwc=nhwc, precision=nets.precision,
                compiled=self.compiled, images=images)
            loss = value if loss is None else loss + value
            grad = g if grad is None else grad + g
        if self.outer_loop > 1 and batch.memory is not None:
            batch.memory.clear()
            if (batch.iteration + 1) % self.outer_loop:  # another round on these nets
                batch.memory.update(iteration=batch.iteration,
                                    nets=[{k: v.detach() for k, v in p.items()} for p in current])
        return MetaGradient(loss, {"images": grad})

    def describe(self) -> dict:
        return {"kind": self.kind, "distance": "DC's per-output-unit cosine, 1-d tensors skipped",
                "outer_loop": self.outer_loop, "inner_loop": self.inner_loop,
                "augment": "dsa, siamese per class" if self.augment else "none",
                "learned_rates": False}


@register_objective("gradient")
def _gradient(cfg, num_classes: int | None) -> Objective:
    augment = matching_augment(cfg, "gradient", "dsa-cifar10-ipc1", "DSA's", "none (DC's)")
    o, ipc = cfg.objective, cfg.synth.images_per_class
    outer, inner = o.outer_loop, o.inner_loop
    if outer is None or inner is None:
        if ipc not in DC_LOOPS:
            raise ConfigError(f"--objective gradient has DC's loops for {', '.join(map(str, DC_LOOPS))} "
                              f"images per class; give --outer-loop and --inner-loop for {ipc}")
        outer, inner = (outer or DC_LOOPS[ipc][0]), (inner or DC_LOOPS[ipc][1])
    for flag, value in (("--outer-loop", outer), ("--inner-loop", inner)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if outer > 1 and cfg.run.nproc > 1:
        raise ConfigError("--objective gradient with --outer-loop above 1 keeps its networks "
                          "between rounds in one process: use --nproc 1")
    return GradientMatching(num_classes or 0, augment, compiled=cfg.run.compile, outer_loop=outer, inner_loop=inner,
                            lr_net=cfg.synth.step_lr)
