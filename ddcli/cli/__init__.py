"""The `dd` command line: thin wrappers over the library.

The subcommands are mounted on ``app`` when first used (``ddcli.cli._commands``), so that
`dd --version` and `dd --help` don't import torch.
"""

from ddcli.cli._app import app, main

__all__ = ["app", "main"]
