"""`dd export`: write a bundle as an image folder, a .pt dict or a .npz for other tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddcli.export import FORMATS, export
from ddcli.cli._app import app
from ddcli.cli._options import Json

_DEFAULT_SUFFIX = {"imagefolder": "-imagefolder", "pt": ".pt", "npz": ".npz"}


@app.command("export")
def export_command(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.safetensors) to export.",
                                           show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(FORMATS)}.",
                                     show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file, or folder for imagefolder.", show_default="beside the bundle, named after it", rich_help_panel="Output")] = None,
    json_out: Json = False,
) -> None:
    """Export a bundle for other tools: imagefolder (PNGs + manifest.json), pt or npz."""
    if out is None:  # an unknown format is refused before the path is used
        out = bundle.with_name(bundle.stem + _DEFAULT_SUFFIX.get(fmt, ""))
    report = export(bundle, fmt, out)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    if json_out:
        typer.echo(json.dumps({"format": report.format, "path": str(report.path),
                               "images": report.images, "clipped_pixels": report.clipped_pixels,
                               "warnings": report.warnings}))
        return
    typer.echo(f"{report.path}: {report.images} images as {report.format}")
