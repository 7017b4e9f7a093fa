"""Outer objectives: plain distillation, domain adaptation, and the targeted attack.

The objective only changes what the outer loss asks of the final weights: ``distill``
and ``adapt`` use the real labels (adapt differs in where theta_0 comes from: a pool
pretrained on another dataset); ``attack`` relabels real images of class A as B.
"""

from __future__ import annotations

from torch import Tensor

from ddcli.errors import ConfigError


class Objective:
    """Maps a real batch's labels to the labels the outer loss should aim for."""

    kind = "distill"

    def relabel(self, y: Tensor) -> Tensor:
        return y

    def describe(self) -> dict:
        return {"kind": self.kind}


class AdaptObjective(Objective):
    kind = "adapt"

    def __init__(self, source_dataset: str | None) -> None:
        self.source_dataset = source_dataset

    def describe(self) -> dict:
        return {"kind": self.kind, "source_dataset": self.source_dataset}


class AttackObjective(Objective):
    """Outer loss on real data with class ``attack_class`` relabelled as ``target_class``."""

    kind = "attack"

    def __init__(self, attack_class: int, target_class: int) -> None:
        self.attack_class, self.target_class = attack_class, target_class

    def relabel(self, y: Tensor) -> Tensor:
        return y.masked_fill(y == self.attack_class, self.target_class)

    def describe(self) -> dict:
        return {"kind": self.kind, "attack_class": self.attack_class,
                "target_class": self.target_class}


def make_objective(cfg, num_classes: int) -> Objective:
    """Build and check the objective named by ``cfg.objective``."""
    o = cfg.objective
    if o.kind == "distill":
        return Objective()
    if o.kind == "adapt":
        if not cfg.init.mode.startswith("pretrained"):
            raise ConfigError("--objective adapt needs --init-mode pretrained-random or "
                              "pretrained-fixed with a --pool trained on the source dataset")
        return AdaptObjective(o.source_dataset)
    if o.kind == "attack":
        a, b = o.attack_class, o.target_class
        if a is None or b is None:
            raise ConfigError("--objective attack needs --attack-class A and --target-class B")
        for flag, c in (("--attack-class", a), ("--target-class", b)):
            if not 0 <= c < num_classes:
                raise ConfigError(f"{flag} {c} is out of range: the dataset has classes "
                                  f"0..{num_classes - 1}")
        if a == b:
            raise ConfigError(f"--attack-class and --target-class are both {a}; they must differ")
        return AttackObjective(a, b)
    raise ConfigError(f"unknown objective {o.kind!r}")
