"""What a run carries between iterations: ``RunState``, and its checkpoint file.

``RunState`` is the one list of what a checkpoint stores, what a resume restores and
what the bundle is made from; nothing else about a run survives the process. It is
also the live state: while a run trains, its fields are the learned tensors (on the
device), the meta-optimiser, its scheduler and the augmentation generator themselves
(``Runtime.restore`` makes them live), and a checkpoint is this object written out
(``to_checkpoint``), with no copy in between. The checkpoint is one ``torch.save``
file, written atomically and loaded with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddcli.core.params import Params
from ddcli.errors import CheckpointError
from ddcli.infra import io as _io

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class RunState:
    """The learned tensors, the optimiser, and the run's own record, at ``iteration``."""

    #: the learned tensors, by the names the objectives' meta-gradients use
    LEARNED: ClassVar[tuple[str, ...]] = ("images", "raw_lrs", "soft_labels")

    iteration: int  # completed outer iterations
    images: Tensor  # (S, n, C, H, W), normalised
    labels: Tensor  # (S, n) int64, the slots' hard classes (class-major in each step)
    raw_lrs: Tensor  # (T,), the learned GD rates before ``lrs_from_raw``
    # The meta-optimiser (Adam or SGD) and its StepLR once live; as stored, their
    # state_dicts ({} before the first checkpoint).
    optimizer: Any
    scheduler: Any
    aug_rng: torch.Generator  # the real-batch augmentation generator (stored: its state)
    config: dict[str, Any]  # DistillConfig.to_dict()
    out: str  # the bundle path, absolute, so a resume from elsewhere writes it there
    total_iterations: int
    fixed_params: Params | None = None  # fixed and pretrained-fixed: the one init
    elapsed: float = 0.0  # seconds of training, over every process that ran it
    # CPU seconds of training (all threads of rank 0's process), over every process that
    # ran it; 0 for the iterations of a run started before ddcli recorded it.
    cpu_s: float = 0.0
    last_loss: float = float("nan")
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"iteration", "accuracies"}
    soft_labels: Tensor | None = None  # (S, n, classes) learned labels (--learn-labels)
    # --keep-best: the set with the best validation accuracy so far: {"iteration",
    # "score", "images", "raw_lrs", "soft_labels"} (older checkpoints wrote "labels",
    # read as "soft_labels").
    best: dict[str, Any] | None = None
    # One record per process that ran it (the start, then each resume): infra.provenance.
    provenance: list[dict[str, Any]] = field(default_factory=list)
    # --clip-ema-factor: the moving average of the meta-gradient's norm (0-dim; NaN
    # before the first iteration), ddcli.engine.clipping.
    clip_average: Tensor | None = None
    # What the objective keeps from one iteration to the next (gradient matching: the
    # networks between rounds), changed in place through ``OuterBatch.memory``.
    objective_state: dict[str, Any] = field(default_factory=dict)

    @property
    def learned(self) -> dict[str, Tensor]:
        """The learned tensors themselves (not copies), those the run has."""
        return {name: getattr(self, name) for name in self.LEARNED
                if getattr(self, name) is not None}

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain dict for ``torch.save``: tensors on the CPU, the optimiser, scheduler
        and generator as their states."""
        out = {f.name: _stored(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.fixed_params is not None:
            out["fixed_params"] = {k: v.detach().cpu() for k, v in self.fixed_params.items()}
        return out

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> "RunState":
        names = {f.name for f in dataclasses.fields(cls)}
        best = state.get("best")
        if best is not None and "labels" in best:  # written when learned labels were "labels"
            state = {**state, "best": {("soft_labels" if k == "labels" else k): v
                                       for k, v in best.items()}}
        rng = state.get("aug_rng")
        if isinstance(rng, Tensor):
            generator = torch.Generator()
            generator.set_state(rng)
            state = {**state, "aug_rng": generator}
        return cls(**{k: v for k, v in state.items() if k in names})


def _stored(value: Any) -> Any:
    """A live field as a checkpoint holds it."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stored(v) for v in value]
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        return value.state_dict()
    return value


def save_checkpoint(run_dir: Path, state: RunState) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` atomically; returns the path."""
    path = Path(run_dir) / CHECKPOINT_NAME
    _io.torch_save(path, {"checkpoint_version": CHECKPOINT_VERSION, **state.to_checkpoint()})
    return path


def load_checkpoint(run_dir: str | Path) -> RunState:
    """Load a run folder's checkpoint. ``weights_only`` loading runs no pickled code."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    if not path.exists() and not (run_dir / "config.json").exists():
        raise CheckpointError(
            f"{run_dir} is not a run folder (it has no config.json or {CHECKPOINT_NAME}); "
            "give --resume the folder `dd distill` wrote, <bundle>.run by default")
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} has no {CHECKPOINT_NAME} (the run stopped before its first checkpoint); "
            "start it again without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # any of these from bytes that aren't a torch file (unpickling garbage raises KeyError)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
            TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("checkpoint_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a checkpoint this ddcli version can read")
    try:
        return RunState.from_checkpoint(state)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} lacks fields this version needs: {exc}") from None
