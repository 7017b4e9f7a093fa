"""Progress displays for long work: the CLI's, and the Python API's on request.

The library only emits events; the classes here draw them, on stderr. On a terminal that
is a Rich progress bar with an ETA; otherwise (a log file, a pipe) a plain line every
~15 s; with ``quiet=True`` nothing. Each is a callbacks object and a context manager
(leaving it stops the live display and gives the terminal back):

- ``DistillProgress`` for ``distill``/``resume`` (``on_start``, ``on_iteration``,
  ``on_eval``); ``distill(cfg, progress=True)`` uses it for you;
- ``PretrainProgress`` for ``pretrain`` (``on_start``, ``on_step``, ``on_net``);
  ``pretrain(..., progress=True)`` uses it;
- ``EvalProgress`` for ``evaluate`` (``on_stage``: a line per row), as
  ``evaluate(path, callbacks=EvalProgress())``.

All of them draw ``on_progress(ProgressInfo)``, the event any long step emits (k-means
baselines, training one net): one bar per ``label``, replaced when the label changes.

Example:
    >>> from ddcli import distill
    >>> from ddcli.progress import DistillProgress
    >>> with DistillProgress() as progress:  # doctest: +SKIP
    ...     distill(cfg, callbacks=progress)
    >>> distill(cfg, progress=True)  # the same  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ddcli.infra.text import count
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class ProgressInfo:
    """Emitted (``on_progress``) as a long step advances: ``done`` of ``total`` units.

    The same ``label`` means the same step; a new label starts a new bar.
    """

    label: str  # what is being done, e.g. "kmeans · class 3/10"
    done: int
    total: int
    detail: str = ""  # shown beside the bar, e.g. "loss 0.3140"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def eta(done: float, total: float, elapsed: float) -> str:
    """``"eta m:ss"`` from the rate so far, or ``""`` before there is one."""
    if done <= 0 or elapsed <= 0 or total <= done:
        return ""
    return f"eta {_clock(elapsed * (total - done) / done)}"


class _Display:
    """What every display shares: the quiet, live and plain modes, one Rich ``Progress``
    (Rich allows one live display at a time) and the ``on_progress`` bars."""

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 every_s: float = 15.0) -> None:
        self.quiet, self.every_s = quiet, every_s
        self.console = console or stderr
        self.live = not quiet and self.console.is_terminal
        self.progress: Progress | None = None
        self._last_line = float("-inf")
        self._step: tuple[str, Any, float, int] | None = None  # label, bar, t0, done at t0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display and give the terminal back (plain mode: nothing to do)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self._step = None

    def print(self, message: str) -> None:
        """A line above the bars (or alone, in plain mode)."""
        if not self.quiet:
            (self.progress.console if self.progress else self.console).print(message)

    def _add_bar(self, description: str, total: int | None, completed: int = 0):
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
                console=self.console, refresh_per_second=4)
            self.progress.start()
        return self.progress.add_task(description, total=total, completed=completed, detail="")

    def _line_due(self, final: bool = False) -> bool:
        """Plain mode: True at most once every ``every_s`` seconds, and for a final line."""
        now = time.monotonic()
        if final or now - self._last_line >= self.every_s:
            self._last_line = now
            return True
        return False

    def on_progress(self, info: ProgressInfo) -> None:
        if self.quiet:
            return
        if self._step is None or self._step[0] != info.label:
            self._end_step()
            bar = self._add_bar(info.label, info.total) if self.live else None
            # the rate is measured from this first event on
            self._step = (info.label, bar, time.monotonic(), info.done)
        label, bar, t0, done0 = self._step
        if bar is not None:
            self.progress.update(bar, completed=info.done, total=info.total, detail=info.detail)
        elif self._line_due():
            self.console.print(" · ".join(part for part in (
                f"{label}: {info.done}/{info.total}", info.detail,
                eta(info.done - done0, info.total - done0, time.monotonic() - t0)) if part))

    def _end_step(self) -> None:
        """A finished ``on_progress`` step leaves no bar behind."""
        if self._step is not None and self._step[1] is not None and self.progress is not None:
            self.progress.remove_task(self._step[1])
        self._step = None


class DistillProgress(_Display):
    """Callbacks for ``distill``/``resume``: a bar with loss and rates, eval lines.

    Example:
        >>> with DistillProgress() as progress:  # doctest: +SKIP
        ...     result = distill(cfg, callbacks=progress)
    """

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 every_s: float = 15.0) -> None:
        super().__init__(quiet, console, every_s)
        self._bar = None
        self._start_iter = 0
        self._t0 = time.monotonic()

    def on_start(self, info) -> None:
        self._start_iter, self._t0 = info.start_iteration, time.monotonic()
        verb = "resuming" if info.start_iteration else "distilling"
        self.print(
            f"{verb} {info.config.data.dataset} with {info.model} ({info.num_params:,} params) "
            f"on {info.device}: {count(info.total_iterations, 'iteration')} "
            f"({info.iterations_per_epoch}/real epoch), run folder {info.run_dir}")
        for line in getattr(info, "warnings", ()):  # said even with --quiet
            (self.progress.console if self.progress else self.console).print(
                f"warning: {line}", soft_wrap=True, markup=False)
        if self.live:
            self._bar = self._add_bar("distill", info.total_iterations, info.start_iteration)

    def _rate(self, iteration: int) -> str:
        done, dt = iteration - self._start_iter, time.monotonic() - self._t0
        return f"{done / dt:.2f} it/s" if dt > 0 and done else ""

    def on_iteration(self, info) -> None:
        if self.quiet:
            return
        # the learned GD rates over all steps: their min/mean/max
        stats = (f"loss {info.loss:.4f} · lr min/mean/max {info.lr_min:.4f}/"
                 f"{info.lr_mean:.4f}/{info.lr_max:.4f}")
        rate = self._rate(info.iteration)
        if self._bar is not None and self.progress is not None:
            self.progress.update(self._bar, completed=info.iteration,
                                 detail=" · ".join(p for p in (rate, stats) if p))
        elif self._line_due(final=info.iteration == info.total):
            done = info.iteration - self._start_iter
            parts = (f"iter {info.iteration}/{info.total}", rate, stats,
                     eta(done, info.total - self._start_iter, time.monotonic() - self._t0))
            self.console.print(" · ".join(p for p in parts if p))

    def on_eval(self, ev) -> None:
        accs = ev.accuracies
        spread = (f" (min {min(accs):.2%}, max {max(accs):.2%}, {len(accs)} nets)"
                  if len(accs) > 1 else "")
        self.print(f"iter {ev.iteration}: replay {ev.split} accuracy {ev.mean:.2%}{spread}")

    def on_checkpoint(self, path) -> None:
        pass


class PretrainProgress(_Display):
    """Callbacks for ``pretrain``: one bar over every net's steps, a line per trained net."""

    def on_start(self, info) -> None:
        self._done_steps, self._t0 = 0, time.monotonic()
        self.total = len(info.to_train) * info.steps_per_net
        kept = info.n_nets - len(info.to_train)
        self.print(
            f"pretraining {count(len(info.to_train), info.model + ' net')} "
            f"({info.num_params:,} params) "
            f"on {info.dataset}, {info.nets_per_batch} at a time, on {info.device}, "
            f"{count(info.steps_per_net, 'step')} each" + (f"; keeping {kept} already in {info.pool}"
                                                  if kept else f", into {info.pool}"))
        self._bar = self._add_bar("pretrain", self.total) if self.live and self.total else None

    def on_step(self, info) -> None:
        if self.quiet:
            return
        done = self._done_steps + info.step * len(info.nets)
        if info.step == info.total:
            self._done_steps += info.total * len(info.nets)
        stats = f"nets {info.nets[0]}..{info.nets[-1]} · loss {info.loss:.4f}"
        if self._bar is not None and self.progress is not None:
            self.progress.update(self._bar, completed=done, detail=stats)
        elif self._line_due(final=done == self.total):
            parts = (f"step {done}/{self.total}", stats,
                     eta(done, self.total, time.monotonic() - self._t0))
            self.console.print(" · ".join(p for p in parts if p))

    def on_net(self, info) -> None:
        self.print(f"net {info.index}: test accuracy {info.test_acc:.2%}")


class EvalProgress(_Display):
    """Callbacks for ``evaluate``: a line per row (``on_stage``), a bar per long step."""

    def on_stage(self, info) -> None:
        self._end_step()
        self.print(f"[{info.index}/{info.total}] {info.label}")
