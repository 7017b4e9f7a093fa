"""What both protocols share: the prepared inputs of one evaluation, and baseline rows."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ddcli.core.inner import InnerLoop
from ddcli.core.params import Params, init_params
from ddcli.core.seeds import derive_seed
from ddcli.data import RealData
from ddcli.evaluate._baselines import (
    DETERMINISTIC, SET_BASELINES, build_baseline, kmeans_sets, knn_accuracy,
)
from ddcli.evaluate._report import EvalConfig, EvalRow
from ddcli.progress import ProgressInfo

# Training images each optimized-real candidate is scored on (never test images).
SCORE_SAMPLE = 1024


@dataclass
class StageInfo:
    """Emitted (``on_stage``) before each row is computed."""

    label: str
    index: int
    total: int


@dataclass
class Job:
    """The prepared inputs of one evaluation (everything on ``device``, normalised alike)."""

    cfg: EvalConfig
    model: nn.Module
    images: Tensor  # (S, n, C, H, W)
    labels: Tensor  # (S, n) the slots' classes
    lrs: Tensor | None  # (T,)
    real: RealData
    test_x: Tensor
    test_y: Tensor
    device: torch.device
    scheme: str
    batched: bool | None  # the _batched routines' argument: None = auto
    emit: Callable[[str, Any], None]
    stages: int = 0
    done: int = 0
    notes: list[str] = field(default_factory=list)
    soft_labels: Tensor | None = None  # (S, n, classes) learned labels, when the set has them
    inner: InnerLoop | None = None  # the inner loop the set was learned for (replay)

    @property
    def targets(self) -> Tensor:
        """What the nets train towards: the learned soft labels, else the classes."""
        return self.labels if self.soft_labels is None else self.soft_labels

    @property
    def baseline_targets(self) -> Tensor:
        """What the baselines' nets train towards: their real images' classes (``hard``,
        the default: a random real subset as anyone would train on it), or the set's
        own labels slot by slot (``--baseline-labels set``)."""
        return self.targets if self.cfg.baseline_labels == "set" else self.labels

    def fresh(self, tag: str, count: int, *extra: int | str) -> list[Params]:
        """``count`` fresh inits seeded ``derive_seed(seed, tag, *extra, j)``."""
        return [
            {k: v.to(self.device) for k, v in init_params(
                self.model, self.scheme, derive_seed(self.cfg.seed, tag, *extra, j)).items()}
            for j in range(count)
        ]

    def score_sample(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "score-sample"))
        pick = torch.randperm(self.real.train_x.shape[0], generator=gen)[:SCORE_SAMPLE]
        return self.real.train_x[pick].to(self.device), self.real.train_y[pick].to(self.device)

    def progress(self, label: str, unit: str = "") -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that emits ``on_progress`` for this stage."""
        return lambda done, total: self.emit("on_progress", ProgressInfo(label, done, total, unit))

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[dict[str, float]]:
        self.done += 1
        self.emit("on_stage", StageInfo(label, self.done, self.stages))
        timer = {"seconds": 0.0}
        t0 = time.perf_counter()
        yield timer
        timer["seconds"] = time.perf_counter() - t0


def count_stages(cfg: EvalConfig, distilled_rows: int) -> int:
    sets = [b for b in cfg.baselines if b in SET_BASELINES]
    knn = (1 + len(sets)) if "knn" in cfg.baselines else 0
    return distilled_rows + len(sets) + knn


def baseline_rows(
    job: Job,
    group: str,
    evaluate: Callable[[Tensor, bool], list[float]],
    scorer: Callable[[int], Callable[[Tensor], Tensor]],
) -> list[EvalRow]:
    """Rows for every requested baseline, then the knn rows.

    Args:
        group: the nets' label for these rows.
        evaluate: ``evaluate(sets, shared)``: sets is (D, S, n, C, H, W); with shared
            (a deterministic baseline, D == 1) every net trains on sets[0], otherwise
            net i trains on sets[i]. Returns the accuracies.
        scorer: ``scorer(i)`` -> the optimized-real scoring function of draw i.
    """
    cfg, rows, built = job.cfg, [], {}
    labels = job.labels.cpu()
    for name in (b for b in cfg.baselines if b in SET_BASELINES):
        with job.stage(f"{name} · {group}") as timer:
            draws = 1 if name in DETERMINISTIC else cfg.n_nets
            bar = job.progress(f"{name} sets")
            seeds = [derive_seed(cfg.seed, "baseline", i) for i in range(draws)]
            if name == "kmeans":  # all the draws' clusterings side by side
                sets = kmeans_sets(labels, job.real, seeds, lambda p: bar(p.done, p.total))
            else:
                sets = torch.stack([
                    build_baseline(name, labels, job.real, seed=s, candidates=cfg.candidates,
                                   score=scorer(i))
                    for i, s in enumerate(seeds)
                ])
            sets = sets.to(job.device)  # (D, S, n, C, H, W)
            accs = evaluate(sets, name in DETERMINISTIC)
        built[name] = sets
        rows.append(EvalRow(name, group, accs, seconds=timer["seconds"]))
    if "knn" in cfg.baselines:
        for name, sets in [("distilled", job.images[None])] + list(built.items()):
            with job.stage(f"knn · {name}") as timer:
                accs = [knn_accuracy(s.reshape(-1, *s.shape[-3:]), job.labels.reshape(-1),
                                     job.test_x, job.test_y) for s in sets]
            rows.append(EvalRow("knn", name, accs, seconds=timer["seconds"]))
    return rows
