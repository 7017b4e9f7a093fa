"""`dd visualize`: draw a bundle's images, rates and (with --run) their evolution as PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddcli.viz import visualize
from ddcli.cli._app import app
from ddcli.cli._options import DataRoot, Json

Opt = typer.Option


EXAMPLES = """
# PNGs: a grid per step, an overview, the lr schedule
dd visualize m.safetensors -o m-png
# also the images' evolution over the run's snapshots
dd visualize m.safetensors --run m.run
# also each image minus its starting noise, larger
dd visualize m.safetensors --change --scale 8
"""


@app.command("visualize", epilog=EXAMPLES)
def visualize_command(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.safetensors) to draw.",
                                           show_default=False)],
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Folder for the PNGs.", show_default="<bundle>.viz next to the bundle", rich_help_panel="Output")] = None,
    scale: Annotated[int, Opt(help="Nearest-neighbour upscaling, 1 to 32 (4 makes 28 px digits 112 px).")] = 4,
    layout: Annotated[str, Opt(help="Step grids: auto, rows (a row per class) or columns (a column per class).")] = "auto",
    run: Annotated[Optional[Path], Opt("--run", help="Also draw the images' evolution over the checkpoint*.pt and snapshots/*.pt in RUN_DIR.", metavar="RUN_DIR", show_default=False)] = None,
    step: Annotated[int, Opt(help="With --run: the step the evolution strip follows.")] = 0,
    change: Annotated[bool, Opt("--change", help="Also draw change.png: each image minus the noise it started from (rebuilt from the recorded seed), which shows what was learned long before the noise fades.")] = False,
    data_root: DataRoot = None,
    json_out: Json = False,
) -> None:
    """Draw a grid per step, an overview of all images and the lr schedule as PNGs.

    Soft-label bundles caption each image with its top labels; ZCA bundles are
    un-whitened with the ZCA re-fitted (cached) on the dataset under --data-root."""
    out_dir = out if out is not None else bundle.with_suffix(".viz")
    paths = visualize(bundle, out_dir, scale=scale, layout=layout, run_dir=run,
                      evolution_step=step, change=change, data_root=data_root)
    if json_out:
        typer.echo(json.dumps({"out": str(out_dir), "files": [str(p) for p in paths]}))
        return
    for p in paths:
        typer.echo(str(p))
