"""The Typer app and the one place where errors become one line and an exit code.

Exit codes: 0 success; 2 a usage error (a bad flag or value, an unknown dataset, model
or preset, a bad config file: fix the command); 1 a failure at run time; 130 after
Ctrl-C. Click's own usage errors get the same one line as ddcli's, not its usage box.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer._click import exceptions as click_errors  # typer >= 0.29 vendors Click
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from ddcli.cli._commands import LazyCommands, summary
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


def _usage_line(exc: click_errors.UsageError) -> str:
    """A Click usage error as one ``error:`` line, naming the closest flag for a typo."""
    see = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
    if isinstance(exc, click_errors.NoSuchOption):
        # Click's candidates come from difflib, closest first.
        closest = f"; did you mean {exc.possibilities[0]}?" if exc.possibilities else see
        return f"error: no such option {exc.option_name}{closest}"
    param = getattr(exc, "param", None)
    if param is not None and getattr(exc, "param_hint", None) is None:
        # Named as typed (--steps, DATASET), not as Click quotes all its spellings.
        if param.param_type_name == "option":
            name = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        else:
            name = param.metavar or param.name.upper()
        if isinstance(exc, click_errors.MissingParameter):
            return f"error: missing {param.param_type_name} {name}{see}"
        return f"error: invalid value for {name}: {_sentence(exc.message)}"
    message = _sentence(exc.format_message()).replace(". Did you mean", "; did you mean")
    return f"error: {message}"


def _sentence(text: str) -> str:
    """One line, starting lower case (unless it starts with a name such as DATASET)."""
    text = " ".join(str(text).split()).rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _print_help(command: Any, ctx: Any) -> None:
    # Imported here, not above: only --help needs the layout (and Rich), not a run.
    from ddcli.cli import _docs

    _docs.print_help(command, ctx)


class _Command(TyperCommand):
    """Every dd subcommand: its --help laid out by ``ddcli.cli._docs``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # Typer writes a required argument as "{path}"; the usage line names it as the
        # argument table and the error lines do, in capitals: "dd eval [OPTIONS] PATH".
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            name = param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _print_help(self, ctx)


class _Typer(typer.Typer):
    """A Typer app whose commands are ``_Command``s unless told otherwise."""

    def command(self, name: str | None = None, *, cls: Any = None, **kwargs: Any):
        return super().command(name, cls=cls or _Command, **kwargs)


class _Group(TyperGroup):
    """Maps every error to one line on stderr and its exit code (2 for usage errors).

    Its commands are mounted when first looked up (``ddcli.cli._commands``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = LazyCommands(self.commands, app)

    def summaries(self) -> list[tuple[str, str]]:
        """(name, help) of each visible command, without mounting those not yet mounted."""
        rows = []
        for name in self.commands:
            if not self.commands.is_built(name):  # type: ignore[attr-defined]
                rows.append((name, summary(name)))
            elif not self.commands[name].hidden:
                rows.append((name, self.commands[name].help or ""))
        return rows

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _print_help(self, ctx)

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click_errors.NoArgsIsHelpError:
            raise  # plain `dd`: Typer prints the help
        except click_errors.UsageError as exc:  # `dd --bogus`, `dd evl`
            _report(_usage_line(exc))
            raise typer.Exit(2) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click_errors.UsageError as exc:  # the subcommand's flags and arguments
            _report(_usage_line(exc))
            raise typer.Exit(2) from None
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
        except OSError as exc:  # a full disk, a folder gone mid-write: the place and reason
            if _debug():
                raise
            where = f" {exc.filename}" if exc.filename else ""
            _report(f"error: couldn't write or read{where}: {exc.strerror or exc}")
            raise typer.Exit(1) from None
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


app = _Typer(
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
    from ddcli.infra.signals import rearm_interrupt

    rearm_interrupt()  # Ctrl-C works for every command, even one started with `&` by a script
    prog = os.path.basename(sys.argv[0]) if sys.argv else "dd"
    # `python -m ddcli` (and torchrun's workers) run __main__.py: name the command as typed.
    sys.exit(app(prog_name="python -m ddcli" if prog == "__main__.py" else prog))


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
