"""Mounts every subcommand on the app, one module per command."""

from . import distill  # noqa: F401
