"""The Typer app and the one place where domain errors become exit codes."""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from ddcli.errors import DDError


def _debug() -> bool:
    return os.environ.get("DDCLI_DEBUG", "") not in ("", "0")


def _report(message: str) -> None:
    """Print one error line; under `dd distill --nproc` also leave it where the launcher
    looks (``ddcli.infra.torchrun`` shows one line for all ranks)."""
    typer.echo(message, err=True)
    where = os.environ.get("DDCLI_ERROR_DIR")
    if where:
        rank = os.environ.get("LOCAL_RANK", "0")
        try:
            with open(os.path.join(where, f"rank{rank}.err"), "a") as f:
                f.write(message + "\n")
        except OSError:
            pass


class _Group(TyperGroup):
    """Maps every DDError to one line on stderr and its exit code (1, or 2 for usage)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DDError as exc:
            if _debug():
                raise
            _report(f"error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except BrokenPipeError:  # `dd ... | head`: the reader left; nothing to report
            sys.stderr.close()
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            _report("error: interrupted")
            raise typer.Exit(130) from None
        except MemoryError:
            _report("error: out of memory; try a smaller --batch-size, fewer --steps, or "
                    "--unroll-memory recompute")
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: say so in one line, offer the traceback
            if _debug():
                raise
            _report(f"error: internal error ({type(exc).__name__}: {exc}); "
                    "rerun with DDCLI_DEBUG=1 for the traceback and please report it")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="dd",
    help="Dataset distillation: learn a tiny synthetic training set (Wang et al. 2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    """Console-script entry point (`dd`, `ddcli`, `python -m ddcli`)."""
    from ddcli.cli import _commands  # noqa: F401  (mounts the subcommands)

    sys.exit(app(prog_name=os.path.basename(sys.argv[0]) if sys.argv else "dd"))


def _show_version(value: bool) -> None:
    if value:
        from ddcli._version import __version__

        typer.echo(f"ddcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Dataset distillation: learn a tiny synthetic training set (Wang et al. 2018)."""
