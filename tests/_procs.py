"""Real subprocesses for tests, started as a shell would start them, and never leaked.

- Default signal dispositions: a test runner started with ``&`` from a script has SIGINT
  ignored, and a child would inherit that; here the child's dispositions are set
  explicitly (``ignore=`` reproduces an inherited SIG_IGN on purpose).
- A session and process group of their own, so a signal meant for the test runner (a
  Ctrl-C on its terminal) doesn't reach them, and theirs don't reach it.
- Every process of a run, however deep (torchrun, its workers) and even once orphaned,
  carries the run's tag in its environment: ``Spawned.pids()`` finds them all by it,
  and the ``spawn`` fixture kills them all when the test ends, passed or failed.
- Waits are for a condition (a file appears, the process exits) under a deadline long
  enough for a loaded machine, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

TAG_ENV = "DDCLI_TEST_RUN"
# Generous: two busy cores shared with other jobs can make a start take half a minute.
DEADLINE_S = 300.0
_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGPIPE")
            if hasattr(signal, n)]


def _dispositions(ignore: tuple[int, ...]) -> Callable[[], None]:
    def reset() -> None:  # runs in the child between fork and exec
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN if s in ignore else signal.SIG_DFL)

    return reset


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds ``TAG_ENV=tag`` (zombies have none)."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


class Spawned:
    """One started command: its process, its output files and its tag."""

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict[str, str] | None,
                 ignore: tuple[int, ...], logs: Path) -> None:
        self.tag = uuid.uuid4().hex
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{self.tag}.out", logs / f"{self.tag}.err"
        env = {**(os.environ if env is None else env), TAG_ENV: self.tag}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, restore_signals=True,
                preexec_fn=_dispositions(tuple(ignore)))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Signal the started process alone, as ``kill -SIG PID`` does."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        """Its exit status as a shell reports it: 128 + N after death by signal N."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:.0f} s; stderr:\n"
                                 f"{self.stderr()[-3000:]}") from None
        return 128 - code if code < 0 else code

    def wait_for(self, condition: Callable[[], bool], what: str,
                 timeout: float = DEADLINE_S) -> None:
        """Poll ``condition`` until it holds; fail early if the process has exited."""
        end = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}; "
                                     f"stderr:\n{self.stderr()[-3000:]}")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout:.0f} s; stderr:\n"
                                     f"{self.stderr()[-3000:]}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """Every live process of this run (the started one and all it started)."""
        return tagged_pids(self.tag)

    def assert_none_left(self, timeout: float = 60.0) -> None:
        """Every process of the run exits by itself within ``timeout`` after the first."""
        end = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < end:
            time.sleep(0.1)
        assert not left, f"processes of the run still alive: {_describe(left)}"

    def kill(self) -> None:
        """SIGKILL every process of the run (their own groups, never the test runner's)."""
        own_group = os.getpgrp()
        for _ in range(50):
            pids = self.pids()
            if self.proc.poll() is None:
                pids.append(self.proc.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    group = os.getpgid(pid)
                    if group != own_group:
                        os.killpg(group, signal.SIGKILL)
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _describe(pids: list[int]) -> str:
    rows = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        rows.append(f"{pid}: {cmd[:120]}")
    return "; ".join(rows)


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]
