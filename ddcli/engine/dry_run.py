"""What ``dd distill --dry-run`` measures before a run starts: each unroll memory mode's
peak (``ddcli.core.memory``) and the whole budget's wall time (``ddcli.engine.timing``).

The library builds the data and the model and does the measuring; the CLI only prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ddcli.config import DistillConfig
from ddcli.core import memory as _memory
from ddcli.core.objectives import make_objective
from ddcli.data import load_dataset
from ddcli.errors import ConfigError
from ddcli.infra import device as _device
from ddcli.infra.device import resolve_device
from ddcli.models import create_model


@dataclass
class DryRun:
    """A run's estimates: memory per mode, the process's baseline RSS, the wall time."""

    dataset: str
    model: str
    device: Any  # torch.device
    nproc: int
    real_batch_images: int
    estimate: Any  # ddcli.core.memory's estimate
    baseline_rss: int  # bytes this process holds after loading data and one tiny step (CPU)
    timing: Any = None  # ddcli.engine.timing.TimeEstimate, or None with ``not_timed``
    not_timed: str | None = None

    def peak_rss(self) -> dict[str, int] | None:
        """Each mode's estimated peak RSS (CPU), the data counted once."""
        if not self.baseline_rss:
            return None
        est = self.estimate
        return {m: self.baseline_rss + v - est.data for m, v in est.modes.items()}


def dry_run(cfg: DistillConfig, *, nproc: int = 1) -> DryRun:
    """Estimate ``cfg``'s memory in every unroll mode and time a few of its iterations.

    Raises:
        ConfigError: the objective unrolls nothing (there is no unroll to estimate).
    """
    objective = make_objective(cfg, None)
    if not objective.unrolls:
        raise ConfigError(f"--dry-run estimates an unroll's memory; --objective "
                          f"{cfg.objective.kind} unrolls nothing (its memory is a few "
                          "forward passes of the real batches)")
    data = load_dataset(cfg.data.dataset, root=cfg.data.data_root)
    model = create_model(cfg.model_name(data.name), in_channels=data.in_channels,
                         num_classes=data.num_classes, image_size=data.image_size,
                         **cfg.model.kwargs)
    device = resolve_device(cfg.run.device)
    est = _memory.estimate_memory(cfg, model=model, train_size=data.train_x.shape[0],
                                  test_size=data.test_x.shape[0], nproc=nproc,
                                  device_type=device.type, needs=objective.needs)
    # What this process holds once it has loaded the data and used what a run uses: the
    # framework's share of a training process's RSS, which the tensor counts leave out.
    _memory.warm_framework(model)
    baseline = _current_rss() if device.type == "cpu" else 0
    timing, not_timed = _time_estimate(cfg, data, nproc, est.modes[cfg.run.unroll_memory],
                                       device)
    image_bytes = data.in_channels * data.image_size ** 2 * 4
    return DryRun(dataset=data.name, model=cfg.model_name(data.name), device=device,
                  nproc=nproc, real_batch_images=est.real_batch // image_bytes, estimate=est,
                  baseline_rss=baseline, timing=timing, not_timed=not_timed)


def _time_estimate(cfg: DistillConfig, data, nproc: int, peak: int, device):
    """The run's expected wall time, from a few timed iterations; (None, why) when they
    would not fit in the memory that is free now."""
    from ddcli.engine import timing

    free = _device.available_memory(device)
    if free is not None and peak > free:
        fmt = _memory.format_bytes
        return None, (f"this run's estimated peak {fmt(peak)} exceeds the {fmt(free)} free "
                      f"on {device}")
    return timing.estimate_time(cfg, data=data, nproc=nproc), None


def _current_rss() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
