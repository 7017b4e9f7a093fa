"""Stopping on SIGINT, SIGTERM and SIGHUP, and leaving no process of a run behind.

A run treats the three signals alike, in one process and under ``--nproc``:

- the first one asks the loop to stop after the current iteration; rank 0 writes a
  checkpoint and every process exits with 128 + N: 130 (SIGINT, Ctrl-C), 143 (SIGTERM:
  ``kill``, ``timeout``, a batch scheduler) or 129 (SIGHUP: the terminal closed);
- a second one stops at once. Checkpoints are written atomically, so the last one is
  intact. SIGINT raises ``KeyboardInterrupt`` (what Python and the CLI expect of
  Ctrl-C); SIGTERM and SIGHUP raise ``SystemExit(128 + N)``. Both unwind, so the
  progress display still restores the terminal; a third signal exits without unwinding.

The handlers are installed whatever disposition was inherited: a non-interactive shell
starts ``cmd &`` with SIGINT ignored, and a run started that way must still stop on
Ctrl-C. The one exception is an ignored SIGHUP, which is what ``nohup`` asks for.

``dd distill --nproc N`` is a tree: the launcher, torchrun in a session of its own (so a
terminal's Ctrl-C reaches the launcher alone and each worker is signalled exactly once),
and N workers (torch starts each in its own session). The launcher forwards the signals
to torchrun (``forward_signals``), and torchrun passes them to every worker. If a parent
dies without passing anything on (``kill -9``), the parent-death signal set by
``die_with_parent`` sends SIGTERM to its children, so none of them outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Iterator

#: the signals that stop a run, as Ctrl-C does
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
#: the environment variable that tells a child which process started it
PARENT_PID_ENV = "DDCLI_PARENT_PID"


def exit_code(signum: int) -> int:
    """The exit status a shell reports for a process stopped by ``signum``."""
    return 128 + int(signum)


class StopFlag:
    """Set by the first stop signal; read by the loop at its sync points."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0  # signals received so far

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number; 130 (as for Ctrl-C) if none was received here."""
        return exit_code(self.signum if self.signum is not None else signal.SIGINT)


def _armed(signals: tuple[int, ...]) -> list[int]:
    """The signals to handle here: all of them, except a SIGHUP that ``nohup`` ignores."""
    hup = getattr(signal, "SIGHUP", None)
    return [s for s in signals if not (s == hup and signal.getsignal(s) is signal.SIG_IGN)]


@contextlib.contextmanager
def _handling(signals: list[int], handler) -> Iterator[None]:
    """Install ``handler`` for ``signals``, then put the previous ones back. Off the main
    thread, where Python can't install handlers, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopFlag]:
    """Turn the first stop signal into a request (``flag.requested``); a second stops now.

    Off the main thread, where Python can't install handlers, the flag is never set.

    Example:
        >>> with stop_on_signals() as stop:  # doctest: +SKIP
        ...     while not stop.requested:
        ...         step()
    """
    flag = StopFlag()

    def handler(signum, frame):
        flag.count += 1
        if flag.count == 1:
            flag.signum = signum
            return
        if flag.count > 2:  # the unwinding itself is stuck: leave without it
            os._exit(exit_code(signum))
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"error: stopped at once by a second {signal.Signals(signum).name}; the last "
              "checkpoint is intact", file=sys.stderr, flush=True)
        raise SystemExit(exit_code(signum))

    with _handling(_armed(signals), handler):
        yield flag


def rearm_interrupt() -> None:
    """Let Ctrl-C raise ``KeyboardInterrupt`` even if SIGINT was inherited as ignored.

    Python leaves an ignored SIGINT ignored at startup, so a command started with ``&``
    from a script could not be stopped with Ctrl-C (or ``kill -INT``) at all.
    """
    if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Forwarding(StopFlag):
    """The launcher's side: the child to pass signals to, and the first signal seen."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen | None = None

    def attach(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Forward to ``proc`` from now on, including a signal that came while it started."""
        self.proc = proc
        if self.signum is not None:
            self._send(self.signum)
        return proc

    def _send(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


@contextlib.contextmanager
def forward_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[Forwarding]:
    """Pass every stop signal this process gets on to the child given to ``attach``.

    Enter it *before* starting the child: a caught signal is reset to its default in an
    exec'd child, while one this process inherited as ignored would stay ignored there.
    """
    fwd = Forwarding()

    def handler(signum, frame):
        fwd.count += 1
        if fwd.signum is None:
            fwd.signum = signum
        fwd._send(signum)

    with _handling(_armed(signals), handler):
        yield fwd


# prctl(2) option: the signal this process gets when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux).

    ``$DDCLI_PARENT_PID`` names the parent that should be alive: if it has died already
    (before this call could register), the signal is sent at once. Returns whether the
    parent-death signal is set; elsewhere than Linux this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(PARENT_PID_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os.kill(os.getpid(), signum)
    return True
