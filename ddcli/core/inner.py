"""How a synthetic set's inner steps run: the update rule, the schedule, augmentation.

A set is only meaningful with the inner loop it was learned for, so distillation and
every evaluation that replays a set build it the same way, from the run's config
(``InnerLoop.from_config``; a bundle stores that config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ddcli.core.augment import DSA, parse_augment
import torch

from ddcli.core.schedules import BalancedSchedule, CyclicSchedule, PoolSchedule, Schedule
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import GD, SGD, Adam, StepFn, UpdateRule


@dataclass(frozen=True)
class InnerLoop:
    """The inner loop of a set: S ordered steps cycled (the paper) or minibatches of a
    pool (``inner_batch`` images, or ``inner_batch_per_class`` of every class), T steps
    in all, one update rule, optional DSA."""

    steps: int  # S
    images_per_step: int  # n
    length: int  # T
    rule: UpdateRule
    inner_batch: int | None = None
    augment: DSA | None = None
    inner_batch_per_class: int | None = None
    images_per_class: int = 1  # k: a step's n slots are class-major, k of each class
    window: int | None = None  # distillation differentiates the last W steps (None: all T)
    soft_labels: bool = False  # the steps' targets are learned label vectors

    @classmethod
    def from_config(cls, cfg: Any, images_per_step: int) -> "InnerLoop":
        """From a ``DistillConfig`` (or its dict, as bundles store it)."""
        from ddcli.config import DistillConfig  # config is above core; only its values are used

        if isinstance(cfg, dict):
            cfg = DistillConfig.from_dict(cfg)
        s = cfg.synth
        rule: UpdateRule = GD()
        if s.inner_optimizer == "sgd":
            rule = SGD(momentum=s.inner_momentum, weight_decay=s.inner_weight_decay)
        elif s.inner_optimizer == "adam":
            rule = Adam(betas=(s.inner_beta1, s.inner_beta2), eps=s.inner_eps)
        augment = parse_augment(cfg.data.augment) if cfg.data.augment.startswith("dsa") else None
        return cls(steps=s.steps, images_per_step=images_per_step, length=cfg.total_steps,
                   rule=rule, inner_batch=s.inner_batch, augment=augment,
                   inner_batch_per_class=s.inner_batch_per_class,
                   images_per_class=s.images_per_class, window=s.window,
                   soft_labels=s.learn_labels)

    @property
    def differentiated(self) -> int:
        """W: the steps one meta-gradient differentiates (the window, else all T)."""
        return self.window or self.length

    @property
    def batch_size(self) -> int:
        """Synthetic images in one inner step."""
        if self.inner_batch_per_class is not None:
            return self.inner_batch_per_class * (self.images_per_step // self.images_per_class)
        return self.inner_batch or self.images_per_step

    def step_fn(self, model: nn.Module, *, compiled: bool | str = False) -> StepFn:
        """The step map of this loop's rule; ``compiled``: as ``StepFn``'s."""
        return StepFn(model, self.rule, compiled=compiled)

    def schedule(self, seed: int, *, per_net: bool = False, augment: bool = False) -> Schedule:
        """The schedule of one unroll: minibatches drawn from ``seed`` (pool mode), and
        DSA seeded by (``seed``, step) when ``augment`` and the loop augments."""
        aug = None
        if augment and self.augment is not None:
            dsa = self.augment

            def aug(x, t):
                return dsa(x, derive_seed(seed, "dsa", t))
        if self.inner_batch_per_class is not None:
            pool = torch.arange(self.steps * self.images_per_step)
            slot_classes = pool % self.images_per_step // self.images_per_class  # (S x n,)
            return BalancedSchedule(slot_classes, self.inner_batch_per_class, self.length,
                                    derive_seed(seed, "inner-batches"), per_net=per_net,
                                    augment=aug)
        if self.inner_batch is None:
            return CyclicSchedule(self.steps, self.length, per_net=per_net, augment=aug)
        return PoolSchedule(self.steps * self.images_per_step, self.inner_batch, self.length,
                            derive_seed(seed, "inner-batches"), per_net=per_net, augment=aug)
