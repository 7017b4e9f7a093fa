"""Flags shared by several subcommands, as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DataRoot = Annotated[
    Optional[Path],
    typer.Option(
        "--data-root",
        help="Folder with the datasets in torchvision's layout. Default: $DDCLI_DATA_ROOT, "
        "then ~/.cache/ddcli/data.",
        show_default=False,
    ),
]
Device = Annotated[
    Optional[str],
    typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. (default: auto)",
                 show_default=False),
]
Seed = Annotated[
    Optional[int], typer.Option("--seed", help="Seed for inits and data order. (default: 0)",
                                show_default=False)
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
