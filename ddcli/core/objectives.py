"""Outer objectives: what a distillation run minimises over its synthetic set.

An objective owns the outer loss. It says what it needs from the real data each
iteration (``needs``), and it turns that, the iteration's networks and the learned
tensors into the loss and its gradient (``meta_gradient``). The engine fetches what is
needed, draws the networks, sums the gradient over processes and steps the optimiser;
it knows nothing of any one objective.

- ``distill``: the paper's loss, cross-entropy of the unrolled net on a real batch.
- ``adapt``: the same loss; only theta_0 differs (a pool pretrained on another dataset).
- ``attack``: the same loss with real images of class A relabelled as B.
- ``distribution`` (``ddcli.core.distribution``): DM, matching mean embeddings of real
  and synthetic images class by class under fresh networks; no unroll.
- ``trajectory`` (``ddcli.core.trajectory``): MTT, the unroll from an expert's weights
  at epoch t aims at its weights at epoch t + M.
- ``gradient`` (``ddcli.core.gradient_matching``): DC and DSA, matching the gradients of
  real and synthetic batches class by class under fresh networks; no unroll.

A new objective is one module: a subclass of ``Objective`` and a builder decorated with
``@register_objective(name)`` (imported at the bottom of this file), its name in
``ddcli.config.OBJECTIVES`` (the flag's choices), and a preset (docs/architecture.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from torch import Tensor

from ddcli.core.meta_gradient import NetsMetaGradient, outer_loss
from ddcli.core.params import Params
from ddcli.core.unroll import MetaGradient
from ddcli.errors import ConfigError
from ddcli.infra.registry import Registry
from ddcli.init_modes import is_pretrained

# What an objective asks the engine for at each iteration (``Objective.needs``).
REAL_BATCH = "real-batch"  # x, y: a real minibatch, augmented as --augment says
CLASS_BATCHES = "class-batches"  # per_class: --batch-size real images of each class, as stored
NOTHING = "nothing"
# targets: the init source's segment ends, one per net (``InitSource.segments``); its
# starts are the iteration's inits.
EXPERT_SEGMENT = "expert-segment"


@dataclass
class OuterBatch:
    """What one iteration hands its objective; only the fields ``needs`` names are set."""

    seed: int  # the iteration's seed, for randomness the loss draws itself (Siamese DSA)
    iteration: int = 0  # the outer iteration, counted from 0 (the iterations done before it)
    x: Tensor | None = None  # (B, C, H, W)
    y: Tensor | None = None  # (B,)
    per_class: list[Tensor] | None = None  # class c's real images, (B_c, C, H, W)
    targets: list[Params] | None = None  # net i's target weights (EXPERT_SEGMENT)
    # The run's RunState.objective_state: what an objective keeps between iterations,
    # changed in place and checkpointed with the run (None outside a run: keep nothing).
    memory: dict | None = None


class Objective(abc.ABC):
    """The outer loss of a run and its gradient with respect to the learned tensors.

    Class attributes say what the engine must provide: ``needs`` (one of ``REAL_BATCH``,
    ``CLASS_BATCHES``, ``EXPERT_SEGMENT``, ``NOTHING``), ``learns_rates`` (False: the inner rates stay at
    ``--step-lr``, outside the optimiser, and the bundle stores them as they began) and
    ``unrolls`` (False: the set's inner loop plays no part, nor ``--dry-run``'s estimate).
    """

    kind: ClassVar[str]
    needs: ClassVar[str] = REAL_BATCH
    learns_rates: ClassVar[bool] = True
    unrolls: ClassVar[bool] = True

    @abc.abstractmethod
    def meta_gradient(self, nets: NetsMetaGradient, inits: list[Params],
                      learned: dict[str, Tensor], batch: OuterBatch, **plan: Any) -> MetaGradient:
        """The loss summed over ``inits`` (the iteration's networks, this process's share)
        and its gradient for every learned tensor that requires grad.

        ``nets`` differentiates an unroll of the set's inner loop (its step map, memory
        mode, batching); ``plan`` is the iteration's ``labels``, ``schedule`` and
        ``window`` for it. An objective that does not unroll may ignore both.
        """

    def describe(self) -> dict:
        """The bundle's record of the objective (``extra["objective"]``)."""
        return {"kind": self.kind}


class RealLoss(Objective):
    """The paper's objective: cross-entropy of the unrolled weights on a real batch."""

    kind = "distill"

    def relabel(self, y: Tensor) -> Tensor:
        """The targets the outer loss aims for, given the real labels."""
        return y

    # The ``OuterLoss`` at the final weights, on a real batch or a chunk of it.
    loss = staticmethod(outer_loss)

    def meta_gradient(self, nets: NetsMetaGradient, inits: list[Params],
                      learned: dict[str, Tensor], batch: OuterBatch, **plan: Any) -> MetaGradient:
        return nets(inits, learned, batch.x, self.relabel(batch.y), loss_fn=self.loss, **plan)


class AdaptObjective(RealLoss):
    kind = "adapt"

    def __init__(self, source_dataset: str | None) -> None:
        self.source_dataset = source_dataset

    def describe(self) -> dict:
        return {"kind": self.kind, "source_dataset": self.source_dataset}


class AttackObjective(RealLoss):
    """Outer loss on real data with class ``attack_class`` relabelled as ``target_class``."""

    kind = "attack"

    def __init__(self, attack_class: int, target_class: int) -> None:
        self.attack_class, self.target_class = attack_class, target_class

    def relabel(self, y: Tensor) -> Tensor:
        return y.masked_fill(y == self.attack_class, self.target_class)

    def describe(self) -> dict:
        return {"kind": self.kind, "attack_class": self.attack_class,
                "target_class": self.target_class}


# --- the registry: name -> builder(cfg, num_classes or None) -----------------------------
_OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective")
register_objective = _OBJECTIVES.register


def list_objectives() -> list[str]:
    return _OBJECTIVES.names()


def make_objective(cfg, num_classes: int | None) -> Objective:
    """Build the objective named by ``cfg.objective.kind``, checking the config for it.

    ``num_classes`` None: before the data is loaded (``DistillConfig.validate``), the
    checks that need it are left for later.
    """
    builder = _OBJECTIVES.get(cfg.objective.kind)
    if builder is None:
        raise ConfigError(f"unknown objective {cfg.objective.kind!r}; known: "
                          f"{', '.join(list_objectives())}")
    return builder(cfg, num_classes)


@register_objective("distill")
def _distill(cfg, num_classes: int | None) -> Objective:
    return RealLoss()


@register_objective("adapt")
def _adapt(cfg, num_classes: int | None) -> Objective:
    if not is_pretrained(cfg.init.mode):
        raise ConfigError("--objective adapt needs --init-mode pretrained-random or "
                          "pretrained-fixed with a --pool trained on the source dataset")
    return AdaptObjective(cfg.objective.source_dataset)


@register_objective("attack")
def _attack(cfg, num_classes: int | None) -> Objective:
    a, b = cfg.objective.attack_class, cfg.objective.target_class
    if a is None or b is None:
        raise ConfigError("--objective attack needs --attack-class A and --target-class B")
    for flag, c in (("--attack-class", a), ("--target-class", b)):
        if num_classes is not None and not 0 <= c < num_classes:
            raise ConfigError(f"{flag} {c} is out of range: the dataset has classes "
                              f"0..{num_classes - 1}")
    if a == b:
        raise ConfigError(f"--attack-class and --target-class are both {a}; they must differ")
    return AttackObjective(a, b)


# Objectives in modules of their own register on import.
from ddcli.core import distribution, gradient_matching, trajectory  # noqa: E402,F401  isort: skip
