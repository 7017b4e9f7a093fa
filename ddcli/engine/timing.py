"""How long a run will take, measured before it starts (``dd distill --dry-run``).

The run is set up as ``distill`` would set it up (data on the device, model, inits,
Adam), in a temporary run folder, and a few of its real outer iterations are timed
after one warm-up iteration, which pays the first-call costs (allocator growth, kernel
selection, a CUDA context) that a long run spreads over thousands. With
``--eval-every`` one periodic evaluation is timed too. The whole budget is then

    iterations * s_per_iteration + evaluations * s_per_eval

Not counted: loading the data and writing checkpoints, snapshots and the bundle.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ddcli.config import DistillConfig, merge_dicts
from ddcli.data import RealData
from ddcli.infra import device as _device
from ddcli.init_modes import samples_nets

# A warm-up slower than this means long iterations: time one more, not two.
_LONG_WARMUP_S = 10.0
# Short iterations are timed until this much time has passed (at most _MOST of them), so
# that one slow iteration on a busy machine weighs less.
_ENOUGH_S, _MOST = 1.0, 10


@dataclass
class TimeEstimate:
    """The expected wall time of a run's whole budget, from iterations timed here."""

    iterations: int  # the run's budget of outer iterations
    s_per_iteration: float
    measured: int  # iterations timed, after the warm-up
    evaluations: int  # periodic evaluations the run makes (--eval-every)
    s_per_eval: float  # one of them, timed (0 without --eval-every)

    @property
    def total_s(self) -> float:
        return self.iterations * self.s_per_iteration + self.evaluations * self.s_per_eval

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}


def estimate_time(cfg: DistillConfig, *, data: RealData | None = None, nproc: int = 1,
                  measure: int = 2) -> TimeEstimate:
    """Time outer iterations of ``cfg`` (after a warm-up) and extrapolate.

    Args:
        cfg: the run's configuration.
        data: preloaded real data (else loaded as ``distill`` loads it).
        nproc: processes the run will split its nets over; this process times one
            process's share (communication between them is not counted).
        measure: iterations to time at least after the warm-up (1 if the warm-up took
            over 10 s); short ones are timed for about 1 s (at most 10).
    """
    from ddcli.engine.loop import _Run  # the loop imports the engine; this module doesn't

    cfg = _one_process_share(cfg, nproc)
    with tempfile.TemporaryDirectory(prefix="ddcli-dry-run-") as tmp:
        run = _Run(cfg, Path(tmp) / "timing.safetensors", Path(tmp) / "timing.run", data,
                   callbacks=None, state=None)
        rt = run.rt
        try:
            with _device.retain_freed_memory(rt.device):
                warmup = _timed(lambda: run.outer_step(0, False).tolist())
                least = 1 if warmup > _LONG_WARMUP_S else max(1, measure)
                spent, n = 0.0, 0
                while n < least or (spent < _ENOUGH_S and n < _MOST):
                    n += 1
                    spent += _timed(lambda: run.outer_step(n, False).tolist())
                per_it = spent / n
                every = cfg.run.eval_every
                per_eval = (_timed(lambda: rt.quick_eval(run.state.learned, run.source))
                            if every else 0.0)
        finally:
            rt.dist.close()
    evaluations = math.ceil(rt.total / every) if every else 0  # every N-th, and the last
    return TimeEstimate(iterations=rt.total, s_per_iteration=per_it, measured=n,
                        evaluations=evaluations, s_per_eval=per_eval)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()  # each call reads a value back, so the device has finished its work
    return time.perf_counter() - t0


def _one_process_share(cfg: DistillConfig, nproc: int) -> DistillConfig:
    """``cfg`` as one of ``nproc`` processes runs it: its share of the sampled nets."""
    changes: dict = {"run": {"nproc": 1}}
    if nproc > 1 and samples_nets(cfg.init.mode):
        changes["init"] = {"sample_n_nets": math.ceil(cfg.init.sample_n_nets / nproc)}
    return DistillConfig.from_dict(merge_dicts(cfg.to_dict(), changes)).validate()


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"17 min"``, ``"3.4 h"``, ``"2.1 days"``: as precise as a guess."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
