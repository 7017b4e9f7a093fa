"""How each pool network is trained: ``PretrainRecipe``, stored in ``pool.json``, whose
fields are also `dd pretrain`'s options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ddcli.core.augment import parse_augment
from ddcli.errors import ConfigError
from ddcli.infra.sections import Flag, field_flags, flag

OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}


def _flag(default: Any, help: str, **kw: Any) -> Any:
    # A recipe field with this metadata is also a `dd pretrain` option (ddcli.cli.pretrain).
    return field(default=default, metadata=flag(help, panel="Options", **kw))


def recipe_flags() -> tuple[Flag, ...]:
    """`dd pretrain`'s options that are ``PretrainRecipe`` fields, in field order."""
    return field_flags(PretrainRecipe)


@dataclass
class PretrainRecipe:
    """How each pool network is trained; stored in ``pool.json``.

    The default (Adam, lr 1e-3, batch 128, 2 epochs) takes LeNet to about 98.5% on MNIST.
    """

    real_epochs: float = _flag(2.0, "Passes over the real training set per network.")
    optimizer: str = _flag("adam", "adam or sgd (with --momentum).", choices=OPTIMIZERS)
    lr: float | None = _flag(None, "Learning rate.",  # None: DEFAULT_LR of the optimizer
                             default_text="0.001 for adam, 0.01 for sgd")
    batch_size: int = _flag(128, "Real images per step, per network.")
    momentum: float = _flag(0.9, "SGD momentum.")
    weight_decay: float = _flag(0.0, "L2 weight decay.")
    # Keep every net's weights after each epoch (MTT's expert buffers); whole epochs only.
    trajectories: bool = _flag(False, "Also keep each net's weights after every epoch (expert "
                               "trajectories for --objective trajectory).")
    # MTT trains its experts with DSA's augmentation (buffer.py, --dsa True); a net's
    # draws are a pure function of (seed, net, step), whatever group it trains in.
    augment: str = _flag("none", "Augment each real batch: none, dsa or dsa:FAMILIES "
                         "(MTT's experts: dsa).", metavar="NAME")
    # The images `dd distill --validation N` holds out (the same N, the same images):
    # experts that never saw them leave a run's validation split unseen.
    validation: int = _flag(0, "Training images held out of every net's training (the "
                            "images dd distill --validation N holds out).", metavar="N")

    def resolved(self) -> "PretrainRecipe":
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if not self.real_epochs > 0:
            raise ConfigError(f"--real-epochs must be positive, got {self.real_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {self.batch_size}")
        lr = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        if not lr > 0:
            raise ConfigError(f"--lr must be a positive number, got {lr}")
        augment = self.augment or "none"
        if augment == "dc" or augment.startswith("dc:"):
            raise ConfigError("--augment dc is DC's evaluation augmentation; pretrain takes "
                              "none, dsa or dsa:FAMILIES")
        try:
            parse_augment(augment)
        except ValueError as exc:
            raise ConfigError(f"--augment: {exc}") from None
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) or (
                self.validation < 0):
            raise ConfigError(f"--validation must be a count of images >= 0, got "
                              f"{self.validation!r}")
        if self.trajectories and self.real_epochs != int(self.real_epochs):
            raise ConfigError(f"--trajectories saves the weights after every epoch: "
                              f"--real-epochs must be a whole number, got {self.real_epochs}")
        return PretrainRecipe(float(self.real_epochs), self.optimizer, float(lr),
                              self.batch_size, self.momentum, self.weight_decay,
                              bool(self.trajectories), augment, self.validation)

    def record(self) -> dict[str, Any]:
        """The recipe as ``pool.json`` stores it (without trajectories or augmentation,
        as before those options existed, so older pools still grow)."""
        out = asdict(self)
        if not self.trajectories:
            del out["trajectories"]
        if out["augment"] in ("none", "", None):  # pools from before the option grow on
            del out["augment"]
        if not out["validation"]:
            del out["validation"]
        return out
