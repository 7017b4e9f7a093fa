"""Mounts every subcommand on the app, one module per command."""

from . import distill  # noqa: F401
from . import export, visualize  # noqa: F401
from . import pretrain  # noqa: F401
from . import eval  # noqa: F401,A004
