"""``python -m ddcli.infra.torchrun ARGS``: torchrun with ddcli's one-line errors.

``dd distill --nproc N`` starts this instead of ``torchrun`` itself, which on a failed
worker or a Ctrl-C prints a Python traceback, a failure report and log lines, and
lets every rank print the same error. Here:

- rank 0 keeps the terminal (progress, its result, its one-line error);
- the other ranks write to log files, so an error common to all ranks shows once;
  when only another rank failed, its error line is printed, tagged with its rank;
- torchrun's own log lines and traceback are dropped (also its warnings on a Ctrl-C),
  and the exit status is the failing worker's, or 128 + N after signal N (130 after
  Ctrl-C, 143 after SIGTERM, 129 after SIGHUP), as for a one-process run;
- started by ``dd distill --nproc`` (``$DDCLI_PARENT_PID`` is set), it dies with the
  launcher, and tells the workers to check that it is their parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from ddcli.infra import signals

EXIT_INTERRUPTED = signals.exit_code(signal.SIGINT)


def _exit_code(code: int) -> int:
    """A worker's exit code as a shell reports it (128 + N for death by signal N)."""
    return 128 - code if code < 0 else code


def _last_error_line(log_dir: Path, local_rank: int) -> str | None:
    """The error line a rank left (``dd``'s error handler writes ``rank<N>.err``), or
    else the last line of its redirected stderr."""
    paths = [log_dir / f"rank{local_rank}.err",
             *sorted(log_dir.glob(f"**/attempt_*/{local_rank}/stderr.log"))]
    for path in paths:
        if not path.exists():
            continue
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    return None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (which the workers inherit) for the duration."""
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    nproc = int(args.nproc_per_node)
    log_dir = Path(tempfile.mkdtemp(prefix="ddcli-torchrun-"))
    args.log_dir = str(log_dir)
    if nproc > 1:
        args.redirects = ",".join(f"{r}:3" for r in range(1, nproc))
    # The workers leave their error lines in log_dir, and check that this is their parent.
    env = {"DDCLI_ERROR_DIR": str(log_dir), signals.PARENT_PID_ENV: str(os.getpid())}
    # torch's elastic loggers set their own levels (a level on "torch.distributed" does
    # not reach them) and warn on every stop ("Received SIGINT death signal, shutting down
    # workers", "Sending process N closing signal"): the errors worth a line are ours.
    disabled = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with _environ(env):
            run(args)
        return 0
    except SignalException as exc:  # torch's handler: the workers were passed the signal
        return signals.exit_code(exc.sigval)
    except KeyboardInterrupt:  # SIGINT before torch installed its handlers
        return EXIT_INTERRUPTED
    except ChildFailedError as err:
        # Workers that exited with an error by themselves (torchrun stops the rest with
        # SIGTERM). Rank 0's line is on the terminal already; another rank's is not.
        own = {rank: f for rank, f in err.failures.items() if f.exitcode > 0}
        if own:
            rank = 0 if 0 in own else min(own)
            if rank != 0 and not (log_dir / "rank0.err").exists():
                line = _last_error_line(log_dir, own[rank].local_rank)
                if line:
                    print(f"rank {rank}: {line}", file=sys.stderr)
            return own[rank].exitcode
        return _exit_code(err.get_first_failure()[1].exitcode)
    finally:
        logging.disable(disabled)
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    if signals.PARENT_PID_ENV in os.environ:
        # Started by `dd distill --nproc`: SIGTERM when the launcher dies, even by
        # SIGKILL, which stops the workers as a forwarded SIGTERM would.
        signals.die_with_parent(signal.SIGTERM)
    sys.exit(main())
