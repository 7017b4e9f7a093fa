"""Mounts every subcommand on the app, one module per command."""

from ddcli.cli import distill  # noqa: F401
from ddcli.cli import export, visualize  # noqa: F401
from ddcli.cli import pretrain  # noqa: F401
from ddcli.cli import data  # noqa: F401
from ddcli.cli import eval  # noqa: F401,A004
