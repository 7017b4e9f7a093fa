"""The engine's events and result: what ``distill`` reports to callbacks and returns.

The engine never draws anything; it calls ``on_start(StartInfo)``,
``on_iteration(IterationInfo)``, ``on_eval(EvalInfo)``, ``on_snapshot(SnapshotInfo)`` and
``on_checkpoint(path)`` on the callbacks object, and the CLI renders them. Several
callbacks objects go in as one with ``Callbacks(a, b)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

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
    # A resumed run: what differs from the process that started it (versions, data, CPU
    # model, pool), each a line the CLI prints as a warning.
    warnings: list[str] = field(default_factory=list)


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
    # Learned soft labels (--learn-labels): each image's label mass, the sum of its label
    # vector, which weighs its gradient; None with hard labels.
    label_mass_min: float | None = None
    label_mass_mean: float | None = None
    label_mass_max: float | None = None
    # CPU seconds of training (every thread of this process), over every process that
    # ran it: the run's compute, whatever else the machine was doing.
    cpu_s: float = 0.0


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
class SnapshotInfo:
    """The learned set at each ``--snapshot-every`` iteration and at the run's end (the
    run folder keeps files only for the former). Tensors are detached copies on the CPU."""

    iteration: int
    images: Tensor  # (S, n, C, H, W) as learned (normalised), class-major inside each step
    pixels: Tensor  # the same in [0, 1] pixel units (not clipped; ZCA undone)
    lrs: Tensor  # (T,) the learned GD rates
    labels: Tensor  # (S, n) hard labels
    soft_labels: Tensor | None  # (S, n, classes) with --learn-labels
    classes: list[str]


class Callbacks:
    """Several callbacks objects as one: each event goes to every object that has it,
    in the order given.

    Example:
        >>> from ddcli.progress import DistillProgress
        >>> from ddcli.tensorboard import TensorBoardLogger
        >>> from ddcli import Callbacks, distill
        >>> with DistillProgress() as shown, TensorBoardLogger("tb") as tb:  # doctest: +SKIP
        ...     distill(cfg, callbacks=Callbacks(shown, tb))
    """

    def __init__(self, *targets: Any) -> None:
        self.targets = [t for t in targets if t is not None]

    def __getattr__(self, name: str) -> Callable[[Any], None]:
        if not name.startswith("on_"):
            raise AttributeError(name)
        fns = [getattr(t, name) for t in self.__dict__.get("targets", ()) if hasattr(t, name)]
        if not fns:
            raise AttributeError(name)  # the engine skips events no target takes

        def emit(payload: Any) -> None:
            for fn in fns:
                fn(payload)
        return emit


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
