"""Reading the images a run folder kept along the way: its checkpoint and any snapshots.

A snapshot is a ``torch.save`` dict with at least ``iteration`` (int), ``images``
(S, n, C, H, W) float32 normalised and ``raw_lrs`` (T,) float32; the engine's
``checkpoint.pt`` has these keys too. Snapshots live in ``RUN/snapshots/*.pt``, e.g.
``RUN/snapshots/iter_000100.pt``. Everything is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ddcli.core.rates import lrs_from_raw
from ddcli.errors import CheckpointError

SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class Snapshot:
    """The synthetic images and raw rates of a run at one outer iteration."""

    iteration: int
    images: torch.Tensor  # (S, n, C, H, W), normalised
    raw_lrs: torch.Tensor  # (T,)
    path: Path

    @property
    def lrs(self) -> torch.Tensor:
        return lrs_from_raw(self.raw_lrs)


def load_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """Every ``checkpoint*.pt`` and ``snapshots/*.pt`` in ``run_dir``, by iteration.

    Files at the same iteration (the last snapshot and the checkpoint) count once.

    Raises:
        CheckpointError: the folder is missing, holds none of these files, or one of
            them is unreadable or lacks the keys.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    files = sorted(run_dir.glob("checkpoint*.pt")) + sorted((run_dir / SNAPSHOT_DIR).glob("*.pt"))
    if not files:
        raise CheckpointError(
            f"{run_dir} has no checkpoint*.pt or {SNAPSHOT_DIR}/*.pt; pass the run folder "
            "of a distillation (dd distill --run-dir)"
        )
    by_iteration: dict[int, Snapshot] = {}
    for path in files:
        snap = _load(path)
        by_iteration.setdefault(snap.iteration, snap)
    return [by_iteration[k] for k in sorted(by_iteration)]


def _load(path: Path) -> Snapshot:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or not {"iteration", "images", "raw_lrs"} <= state.keys():
        raise CheckpointError(f"{path} is not a snapshot: it needs iteration, images and raw_lrs")
    images, raw_lrs = state["images"], state["raw_lrs"]
    if not (isinstance(images, torch.Tensor) and images.dim() == 5
            and isinstance(raw_lrs, torch.Tensor) and raw_lrs.dim() == 1):
        raise CheckpointError(f"{path} holds images or raw_lrs of the wrong shape")
    return Snapshot(int(state["iteration"]), images.float(), raw_lrs.float(), path)
