"""TensorBoard logging of a distillation run: a callbacks object for ``distill``/``resume``.

``TensorBoardLogger(log_dir)`` writes event files that ``tensorboard --logdir DIR`` shows:

- scalars, at every iteration: ``loss/outer``, the learned GD rates ``lr/min``,
  ``lr/mean`` and ``lr/max``, the meta step size ``meta_lr``, and with learned soft labels
  ``label_mass/min``, ``label_mass/mean`` and ``label_mass/max`` (the sums of the label
  vectors, which weigh each image's gradient);
- at each periodic evaluation (``--eval-every``): ``accuracy/test`` or
  ``accuracy/validation``, the mean over the evaluation nets;
- at each snapshot (``--snapshot-every``, and the run's end): the synthetic set as one
  image grid per step, ``synthetic/step_<s>``, a row per class (a single row with one
  image per class), in pixel units clipped to [0, 1].

It needs the optional ``tensorboard`` package (``pip install 'ddcli[tb]'``); without it
the constructor raises ``MissingDependencyError``. The engine itself never imports it.

Example:
    >>> from ddcli import distill
    >>> from ddcli.tensorboard import TensorBoardLogger
    >>> with TensorBoardLogger("runs/tb") as tb:  # doctest: +SKIP
    ...     distill(cfg, callbacks=tb)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddcli.errors import MissingDependencyError


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package
        raise MissingDependencyError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard "
            "(or ddcli's extra: pip install 'ddcli[tb]')") from None
    return SummaryWriter


class TensorBoardLogger:
    """Callbacks that write a run's scalars and image grids to TensorBoard event files.

    The writer opens at ``on_start``; a resumed run (``start_iteration > 0``) has
    TensorBoard discard the events its earlier process wrote past the checkpoint, so
    nothing shows twice. Use it as a context manager, or call ``close`` (which flushes).

    Args:
        log_dir: the folder of the event files; created if missing.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = _summary_writer_class()
        self.writer: Any = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- the engine's events ------------------------------------------------------------------
    def on_start(self, info) -> None:
        self.close()
        purge = info.start_iteration + 1 if info.start_iteration else None
        self.writer = self._writer_class(str(self.log_dir), purge_step=purge)
        self.writer.add_text("config", "```json\n" + json.dumps(info.config.to_dict(), indent=2)
                             + "\n```", info.start_iteration)

    def on_iteration(self, info) -> None:
        w, it = self.writer, info.iteration
        w.add_scalar("loss/outer", info.loss, it)
        for stat in ("min", "mean", "max"):
            w.add_scalar(f"lr/{stat}", getattr(info, f"lr_{stat}"), it)
            mass = getattr(info, f"label_mass_{stat}", None)
            if mass is not None:
                w.add_scalar(f"label_mass/{stat}", mass, it)
        w.add_scalar("meta_lr", info.meta_lr, it)

    def on_eval(self, ev) -> None:
        self.writer.add_scalar(f"accuracy/{ev.split}", ev.mean, ev.iteration)

    def on_snapshot(self, snap) -> None:
        for step, grid in enumerate(step_grids(snap.pixels, len(snap.classes))):
            self.writer.add_image(f"synthetic/step_{step}", grid, snap.iteration)
        self.writer.flush()


def step_grids(pixels, num_classes: int) -> list:
    """One (3, H', W') grid in [0, 1] per step of ``pixels`` (S, n, C, H, W), whose
    images are class-major: a row per class, or one row when there is one image per class."""
    from torchvision.utils import make_grid

    per_class = pixels.shape[1] // num_classes
    nrow = per_class if per_class > 1 else num_classes
    return [make_grid(step.clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0) for step in pixels]
