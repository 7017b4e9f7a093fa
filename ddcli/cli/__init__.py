"""The `dd` command line: thin wrappers over the library."""

from ddcli.cli import _commands  # noqa: F401  (mounts the subcommands on app)
from ddcli.cli._app import app, main

__all__ = ["app", "main"]
