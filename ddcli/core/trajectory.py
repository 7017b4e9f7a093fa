"""Trajectory matching (MTT; Cazenavette et al., "Dataset Distillation by Matching
Training Trajectories", CVPR 2022): ``--objective trajectory``.

Notation. An expert is a network trained on the real data whose weights were kept after
every epoch (``dd pretrain --trajectories``): theta*_0, theta*_1, ..., theta*_E. Each
iteration draws an expert and a start epoch t in 0..``--max-start-epoch``, starts the
unroll at theta_0 = theta*_t and runs the set's N inner steps (``--unroll-steps``; the
step map, schedule, augmentation and soft labels of any other run) to theta_N. The
loss of one expert is

    L = || theta_N - theta*_{t+M} ||^2 / || theta*_t - theta*_{t+M} ||^2

with M = ``--expert-epochs``: the synthetic steps should cover in N steps what M epochs
on the real data did, measured relative to how far those epochs went. With N = 0,
L = 1 exactly.

Meta-gradient. theta*_t and theta*_{t+M} are constants, so the outer adjoint is
a_N = dL/dtheta_N = 2 (theta_N - theta*_{t+M}) / || theta*_t - theta*_{t+M} ||^2, and the
rest is the unroll's reverse recursion (``ddcli.core.unroll``) in any memory mode:
``recompute`` keeps one step's graph whatever N is, TESLA's (Cui et al. 2023) point.
No real batch is used.

Rates. MTT learns one rate for all N steps; ``--trajectory-rate one`` (the default)
keeps the set's T rates equal by giving each the gradient of a shared rate (the sum of
the per-step gradients): equal at the start, equal gradients, so the meta-optimiser
(elementwise) keeps them equal, and the bundle replays like any other.
``per-step`` learns the T rates separately.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.objectives import EXPERT_SEGMENT, Objective, OuterBatch, register_objective
from ddcli.core.params import Params, stack_params
from ddcli.core.unroll import MetaGradient, OuterFn
from ddcli.errors import ConfigError
from ddcli.init_modes import InitMode


def squared_distance(a: Params, b: Params, *, batched: bool = False) -> Tensor:
    """sum over parameters of ||a - b||^2: a scalar, or (N,) for N stacked nets."""
    def per_net(d: Tensor) -> Tensor:
        return d.pow(2).flatten(1).sum(1) if batched else d.pow(2).sum()

    return sum(per_net(a[k] - b[k]) for k in a)


def segment_outer(start: Params, target: Params, *, batched: bool = False) -> OuterFn:
    """The ``OuterFn`` of the normalised distance to ``target`` (the module's L): its
    value (summed over nets when ``batched``) and a_N, computed in closed form. At
    ``final == start`` the value is exactly 1 (the same sum divided by itself)."""
    length = squared_distance(start, target, batched=batched)  # () or (N,)

    def outer(final: Params) -> tuple[Tensor, tuple[Tensor, ...]]:
        final = {k: v.detach() for k, v in final.items()}
        value = (squared_distance(final, target, batched=batched) / length).sum()

        def scale(d: Tensor) -> Tensor:  # 2 / length, per net when batched
            return 2 / (length.view(-1, *[1] * (d.dim() - 1)) if batched else length)

        return value, tuple((final[k] - target[k]) * scale(final[k]) for k in final)

    return outer


class TrajectoryMatching(Objective):
    """MTT's loss at the unrolled weights (the module docstring's L), summed over experts."""

    kind = "trajectory"
    needs = EXPERT_SEGMENT

    def __init__(self, expert_epochs: int, max_start_epoch: int, rate: str = "one") -> None:
        self.expert_epochs, self.max_start_epoch, self.rate = expert_epochs, max_start_epoch, rate

    def meta_gradient(self, nets: NetsMetaGradient, inits: list[Params],
                      learned: dict[str, Tensor], batch: OuterBatch, **plan: Any) -> MetaGradient:
        targets = batch.targets
        if targets is None or len(targets) != len(inits):
            raise ValueError("trajectory matching needs one target per start (an init source "
                             "with expert trajectories)")

        def outer_for(i: int | None) -> OuterFn:
            if i is None:
                return segment_outer(stack_params(inits), stack_params(targets), batched=True)
            return segment_outer(inits[i], targets[i])

        mg = nets.through(inits, learned, outer_for, **plan)
        if self.rate == "one" and "raw_lrs" in mg.grads:
            g = mg.grads["raw_lrs"]  # (T,): tied, each gets the shared rate's gradient
            mg.grads["raw_lrs"] = g.sum().expand_as(g).clone()
        return mg

    def describe(self) -> dict:
        return {"kind": self.kind, "expert_epochs": self.expert_epochs,
                "max_start_epoch": self.max_start_epoch, "rate": self.rate}


@register_objective("trajectory")
def _trajectory(cfg, num_classes: int | None) -> TrajectoryMatching:
    o = cfg.objective
    if cfg.init.mode != InitMode.PRETRAINED_RANDOM or not cfg.init.pool:
        raise ConfigError("--objective trajectory starts from experts' trajectories: it needs "
                          "--init-mode pretrained-random and a --pool made by `dd pretrain "
                          "--trajectories`")
    if isinstance(o.expert_epochs, bool) or not isinstance(o.expert_epochs, int) or (
            o.expert_epochs < 1):
        raise ConfigError(f"--expert-epochs must be a positive integer, got {o.expert_epochs!r}")
    if isinstance(o.max_start_epoch, bool) or not isinstance(o.max_start_epoch, int) or (
            o.max_start_epoch < 0):
        raise ConfigError(f"--max-start-epoch must be an integer >= 0, got {o.max_start_epoch!r}")
    return TrajectoryMatching(o.expert_epochs, o.max_start_epoch, o.trajectory_rate)

