"""Run-folder checkpoints: one file, written atomically, loaded without unpickling code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ddcli.infra import io as _io
from ddcli.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts and lists) atomically."""
    path = Path(run_dir) / CHECKPOINT_NAME
    _io.torch_save(path, {"checkpoint_version": CHECKPOINT_VERSION, **state})
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Load a run folder's checkpoint. ``weights_only`` loading runs no pickled code."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} has no {CHECKPOINT_NAME} (the run stopped before its first checkpoint); "
            "start it again without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("checkpoint_version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a checkpoint this ddcli version can read")
    return state
