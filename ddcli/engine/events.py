"""The engine's events and result: what ``distill`` reports to callbacks and returns.

The engine never draws anything; it calls ``on_start(StartInfo)``,
``on_iteration(IterationInfo)``, ``on_eval(EvalInfo)`` and ``on_checkpoint(path)`` on the
callbacks object, and the CLI renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ddcli.bundle import Bundle
from ddcli.config import DistillConfig


@dataclass
class StartInfo:
    config: DistillConfig
    run_dir: Path
    out: Path
    start_iteration: int
    total_iterations: int
    iterations_per_epoch: int
    device: str
    model: str
    num_params: int


@dataclass
class IterationInfo:
    iteration: int  # completed outer iterations, 1-based
    total: int
    loss: float
    lr_min: float
    lr_mean: float
    lr_max: float
    meta_lr: float  # the meta-optimiser's current (decayed) step size
    elapsed: float  # seconds in this process


@dataclass
class EvalInfo:
    """A periodic replay evaluation: on the validation split when the run holds one out
    (``--validation``; what ``--keep-best`` selects on), else on the test set."""

    iteration: int
    accuracies: list[float]
    split: str = "test"  # "validation" or "test"

    @property
    def key(self) -> str:
        """The record key of its mean accuracy: ``val_acc`` or ``test_acc``."""
        return "val_acc" if self.split == "validation" else "test_acc"

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


@dataclass
class DistillResult:
    """What ``distill`` returns: the bundle (also saved at ``bundle_path``) and run facts."""

    bundle: Bundle
    bundle_path: Path
    run_dir: Path
    iterations: int
    final_loss: float
    elapsed: float
    evals: list[EvalInfo] = field(default_factory=list)
