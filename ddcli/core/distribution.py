"""Distribution matching (DM; Zhao & Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023): ``--objective distribution``.

Notation. phi_theta(x) is the embedding of an image under a network with weights
theta: the input of the network's last linear layer (ConvNet: its flattened features;
LeNet and the MLP: their last hidden layer). R_c is a batch of real images of class c
(``--batch-size`` of them), S_c the synthetic images of class c (every step's slots of
class c), and A_{c} one DSA transform drawn for class c, applied Siamese: the same
strengths to every image of R_c and of S_c. The loss of one network is

    L(theta) = sum_c || mean_{x in R_c} phi_theta(A_c(x)) - mean_{s in S_c} phi_theta(A_c(s)) ||^2

and its gradient with respect to S (the only learned tensor) is ordinary backprop
through phi and A_c; the real side is a constant (computed without a graph). theta is a
fresh random network every iteration (``--init-mode random``, the only mode allowed),
so the set matches the real data's mean embedding under the distribution of
initialisations, not under one net. Nothing is unrolled: there is no inner loop, and
the inner rates are not learned (``learns_rates = False``): the bundle keeps
``--step-lr`` as every rate and records ``learned_rates: False``, so ``dd eval`` trains
fresh nets on the set (at the train protocol's own rate) instead of replaying it.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ddcli.core.augment import DSA, parse_augment
from ddcli.core.meta_gradient import NetsMetaGradient, _autocast, channels_last
from ddcli.core.objectives import CLASS_BATCHES, Objective, OuterBatch, register_objective
from ddcli.core.params import Params
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import compile_settings
from ddcli.core.unroll import MetaGradient
from ddcli.errors import ConfigError, ModelError
from ddcli.init_modes import draws_fresh_nets


def embedding(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """phi(x): the input of ``model``'s last ``nn.Linear`` under ``params``, (B, features).

    Example:
        >>> from ddcli.models import create_model
        >>> net = create_model("mlp", in_channels=1, num_classes=3, image_size=4, hidden=[5])
        >>> embedding(net, dict(net.named_parameters()), torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 5])
    """
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ModelError(f"distribution matching embeds images with the input of the model's "
                         f"last linear layer; {type(model).__name__} has none")
    seen: list[Tensor] = []
    hook = last[-1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        functional_call(model, params, (x,))
    finally:
        hook.remove()
    return seen[-1].flatten(1)


def class_images(images: Tensor, num_classes: int) -> list[Tensor]:
    """The synthetic images of each class: every step's class-major slots of that class.

    ``images`` (S, n, C, H, W) with n = num_classes * k -> [(S * k, C, H, W)] * num_classes.
    """
    k = images.shape[1] // num_classes
    return [images[:, c * k:(c + 1) * k].flatten(0, 1) for c in range(num_classes)]


_COMPILED_MEAN: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()


def compiled_mean_embedding(model: nn.Module):
    """``(params, x) -> phi(x).mean(0)`` under ``torch.compile``, cached per model: DM's
    real side, a forward pass with no graph (inductor fuses instance norm, ReLU and
    pooling, and under bf16 autocast runs the convolutions on AMX)."""
    if model not in _COMPILED_MEAN:
        compile_settings()
        _COMPILED_MEAN[model] = torch.compile(
            lambda params, x: embedding(model, params, x).mean(0), dynamic=False)
    return _COMPILED_MEAN[model]


def distribution_loss(model: nn.Module, params: Params, synthetic: list[Tensor],
                      real: list[Tensor], *, augment: DSA | None = None, seed: int = 0,
                      nhwc: bool = False, precision: str = "fp32",
                      compiled: bool = False) -> Tensor:
    """DM's loss under one network: sum over classes of the squared distance between
    the mean embeddings of ``real[c]`` and ``synthetic[c]`` (the module docstring's L).

    ``augment`` (a Siamese ``DSA``) transforms both sides of class c with the seed
    ``derive_seed(seed, "dsa", c)``. Differentiable in ``synthetic`` only. ``nhwc``:
    give the model both sides channels-last (the same numbers to float rounding; on a
    CPU the faster kernels for the pooling, norms and ReLUs that are half the time).
    The real side, 96 % of the FLOPs, can run cheaper: ``precision`` "bf16-outer" under
    bfloat16 autocast, ``compiled`` through ``torch.compile``
    (``compiled_mean_embedding``); the synthetic side stays fp32 and eager.
    """
    total = None
    for c, (syn, x) in enumerate(zip(synthetic, real)):
        if augment is not None:
            s = derive_seed(seed, "dsa", c)
            x, syn = augment(x, s), augment(syn, s)
        if nhwc:
            syn = channels_last(syn)
        with torch.no_grad(), _autocast(precision, x.device):
            if compiled:  # inductor picks its own layout
                target = compiled_mean_embedding(model)(params, x)
            else:
                target = embedding(model, params, channels_last(x) if nhwc else x).mean(0)
        target = target.to(syn.dtype)  # (features,); bf16 under bf16-outer
        term = (target - embedding(model, params, syn).mean(0)).pow(2).sum()
        total = term if total is None else total + term
    return total


class DistributionMatching(Objective):
    """DM's objective: mean embeddings matched class by class under fresh networks."""

    kind = "distribution"
    needs = CLASS_BATCHES
    learns_rates = False
    unrolls = False

    def __init__(self, num_classes: int, augment: DSA | None = None, *,
                 compiled: bool = False) -> None:
        self.num_classes = num_classes
        self.augment = dataclasses.replace(augment, siamese=True) if augment else None
        self.compiled = compiled

    def meta_gradient(self, nets: NetsMetaGradient, inits: list[Params],
                      learned: dict[str, Tensor], batch: OuterBatch, **plan: Any) -> MetaGradient:
        model = nets.step.model
        images = learned["images"].detach().requires_grad_(True)  # (S, n, C, H, W)
        synthetic = class_images(images, self.num_classes)
        loss, grad = None, None
        for params in inits:  # one graph alive at a time
            value = distribution_loss(model, params, synthetic, batch.per_class,
                                      augment=self.augment, seed=batch.seed,
                                      nhwc=nets.real_nhwc, precision=nets.precision,
                                      compiled=self.compiled)
            (g,) = torch.autograd.grad(value, images)
            loss = value.detach() if loss is None else loss + value.detach()
            grad = g if grad is None else grad + g
        return MetaGradient(loss, {"images": grad})

    def describe(self) -> dict:
        return {"kind": self.kind, "embedding": "input of the model's last linear layer",
                "augment": "dsa, siamese per class" if self.augment else "none",
                # The rates are --step-lr, unchanged: dd eval trains, never replays.
                "learned_rates": False}


def matching_augment(cfg, kind: str, preset: str, dsa: str, none: str = "none") -> DSA | None:
    """The settings every objective that matches real and synthetic images class by class
    on fresh networks refuses (one line each), and its augmentation, to be applied
    Siamese: DSA's, or None. ``preset``, ``dsa`` and ``none`` name what the messages
    suggest."""
    if not draws_fresh_nets(cfg.init.mode):
        raise ConfigError(f"--objective {kind} draws fresh networks every iteration: use "
                          f"--init-mode random (or --preset {preset})")
    if cfg.synth.learn_labels:
        raise ConfigError(f"--objective {kind} matches images only; drop --learn-labels")
    augment = cfg.data.augment
    if augment == "crop-flip":
        raise ConfigError(f"--objective {kind} augments a class's real and synthetic images "
                          f"alike: use --augment dsa ({dsa}) or {none}, not crop-flip")
    return parse_augment(augment) if augment != "none" else None


@register_objective("distribution")
def _distribution(cfg, num_classes: int | None) -> Objective:
    return DistributionMatching(num_classes or 0,
                                matching_augment(cfg, "distribution", "dm-mnist-ipc10", "DM's"),
                                compiled=cfg.run.compile)
