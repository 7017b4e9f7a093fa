"""Each outer iteration's record: kept on the device, read back in batches, and trimmed.

An iteration leaves one small tensor (loss, finite, stop, rates, label mass; the layout
below); ``Pending`` reads many back with one host sync. ``trim_metrics`` cuts
``metrics.jsonl`` back to a checkpoint's iteration when a run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddcli.infra import io as _io

# The layout of an iteration's record: one small tensor on the device, read in batches;
# runs with learned labels add the label mass's min, mean and max.
LOSS, FINITE, STOP, LR_MIN, LR_MEAN, LR_MAX, MASS_MIN, MASS_MEAN, MASS_MAX = range(9)


class Pending:
    """Iterations whose device-side record hasn't been read back to the host yet.

    ``drain`` reads all of them with one ``tolist()``: a single host sync however many
    iterations ran since the last one.
    """

    def __init__(self) -> None:
        self._items: list[tuple[int, torch.Tensor, float, float, float]] = []

    def add(self, iteration: int, record: torch.Tensor, elapsed: float, meta_lr: float,
            cpu_s: float = 0.0) -> None:
        self._items.append((iteration, record, elapsed, meta_lr, cpu_s))

    def drain(self) -> list[tuple[int, list[float], float, float, float]]:
        if not self._items:
            return []
        values = torch.stack([r for _, r, _, _, _ in self._items]).tolist()
        out = [(it, v, el, lr, cpu) for (it, _, el, lr, cpu), v in zip(self._items, values)]
        self._items = []
        return out


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics log, skipping a half-written last line (a live run)."""
    out = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def trim_metrics(path: Path, iteration: int) -> None:
    """Drop log lines past the checkpoint, so a resumed run doesn't log them twice."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    _io.write_text(path, "".join(line + "\n" for line in keep))
