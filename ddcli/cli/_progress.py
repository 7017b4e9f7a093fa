"""Rendering engine events: a live Rich display on a TTY, plain log lines otherwise."""

from __future__ import annotations

import time

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

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class DistillProgress:
    """Callbacks for the engine. Live bar on a terminal; a line every ~15 s otherwise."""

    def __init__(self, quiet: bool = False, console: Console = stderr, every_s: float = 15.0):
        self.quiet, self.console, self.every_s = quiet, console, every_s
        self.live = not quiet and console.is_terminal
        self.progress: Progress | None = None
        self._last_line = 0.0
        self._start_iter = 0
        self._t0 = time.perf_counter()

    def __enter__(self) -> "DistillProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_start(self, info) -> None:
        self._start_iter, self.total = info.start_iteration, info.total_iterations
        self._t0 = time.perf_counter()
        if self.quiet:
            return
        verb = "resuming" if info.start_iteration else "distilling"
        self.console.print(
            f"{verb} {info.config.data.dataset} with {info.model} ({info.num_params:,} params) "
            f"on {info.device}: {info.total_iterations} iterations "
            f"({info.iterations_per_epoch}/real epoch), run folder {info.run_dir}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]distill"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console, transient=False, refresh_per_second=4,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "distill", total=info.total_iterations, completed=info.start_iteration,
                rate="", stats="",
            )

    def _rate(self, iteration: int) -> str:
        done = iteration - self._start_iter
        dt = time.perf_counter() - self._t0
        return f"{done / dt:.2f} it/s" if dt > 0 and done else ""

    def on_iteration(self, info) -> None:
        if self.quiet:
            return
        stats = (f"loss {info.loss:.4f} · lr {info.lr_min:.4f}/{info.lr_mean:.4f}/"
                 f"{info.lr_max:.4f}")
        if self.progress is not None:
            self.progress.update(self.task, completed=info.iteration,
                                 rate=self._rate(info.iteration), stats=stats)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every_s or info.iteration == info.total:
            self._last_line = now
            self.console.print(f"iter {info.iteration}/{info.total} · {self._rate(info.iteration)}"
                               f" · {stats} (lr min/mean/max)")

    def on_eval(self, ev) -> None:
        if self.quiet:
            return
        accs = ev.accuracies
        spread = f" (min {min(accs):.2%}, max {max(accs):.2%}, {len(accs)} nets)" if len(accs) > 1 else ""
        msg = f"iter {ev.iteration}: replay test accuracy {ev.mean:.2%}{spread}"
        (self.progress.console if self.progress else self.console).print(msg)

    def on_checkpoint(self, path) -> None:
        pass
