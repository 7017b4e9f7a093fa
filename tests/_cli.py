"""Driving the `dd` app in-process, and what every CLI test asserts of an error."""

from typer.testing import CliRunner

from ddcli.cli import app

runner = CliRunner()


def run(*args, **kw):
    """`dd ARGS...` in this process (paths and numbers may be given as objects)."""
    return runner.invoke(app, [str(a) for a in args], **kw)


def one_line_error(result, code: int) -> str:
    """The single `error: ...` line a failed command must print; checks the exit code."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    return err
