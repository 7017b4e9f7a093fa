"""`dd export`: write a bundle for other tools: image folder, .pt, .npz, DD-Ranking, MTT, DC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ddcli.evaluate._sets import set_kind
from ddcli.export import FORMATS, export
from ddcli.cli._app import app
from ddcli.cli._options import DataRoot, Json

_DEFAULT_SUFFIX = {"imagefolder": "-imagefolder", "pt": ".pt", "npz": ".npz",
                   "ddranking": "-ddranking", "mtt": "-mtt", "dc": "-dc.pt",
                   "bundle": ".safetensors"}


EXAMPLES = """
# every step's images, labels and rates in one .pt
dd export m.safetensors --format pt -o m.pt
# PNGs in class folders, for torchvision's ImageFolder
dd export m.safetensors --format imagefolder -o m-images
# a CIFAR-10 set as DD-Ranking's files, in its space
dd export c.safetensors --format ddranking -o c-ddranking
# the set of a run's snapshot (chosen with dd eval SNAPSHOT --validation N) as a bundle
dd export runs/NAME/snapshots/iter_001000.pt --format bundle -o NAME-1000.safetensors
"""


@app.command("export", epilog=EXAMPLES)
def export_command(
    bundle: Annotated[Path, typer.Argument(help="The bundle (.safetensors) to export, or a "
                                           "run folder or one of its snapshots "
                                           "(RUN/snapshots/iter_K.pt): its set there.",
                                           show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"{', '.join(FORMATS)}.",
                                     show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (pt, npz, dc, bundle), or folder (imagefolder, ddranking, mtt).", show_default="beside the bundle, named after it", rich_help_panel="Output")] = None,
    data_root: DataRoot = None,
    json_out: Json = False,
) -> None:
    """Export a bundle for other tools: imagefolder (PNGs + manifest.json), pt, npz, or a set
    for DD-Ranking, MTT or DC/DSA/DM in that evaluator's normalisation (class-major, all
    steps, manifest.json); or a run's set, at its checkpoint or a snapshot, as a bundle.
    --data-root is needed only to un-whiten ZCA bundles and to read a run's data."""
    if out is None:  # an unknown format is refused before the path is used
        out = _default_out(bundle, fmt)
    report = export(bundle, fmt, out, data_root=data_root)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    if json_out:
        record = {"format": report.format, "path": str(report.path), "images": report.images,
                  "clipped_pixels": report.clipped_pixels, "warnings": report.warnings}
        if report.manifest is not None:
            record["pixel_space"] = report.manifest["pixel_space"]
            record["ipc"] = report.manifest["ipc"]
        typer.echo(json.dumps(record))
        return
    typer.echo(f"{report.path}: {report.images} images as {report.format}")


def _default_out(source: Path, fmt: str) -> Path:
    """Beside the bundle, named after it; a run's set beside the run folder, named after
    the run (and the snapshot's iteration), never inside it."""
    suffix = _DEFAULT_SUFFIX.get(fmt, "")
    kind = set_kind(source)
    if kind in ("run", "snapshot"):
        run = source.parent.parent if kind == "snapshot" else source
        name = run.name.removesuffix(".run")  # `dd distill -o m.safetensors` runs in m.run
        if kind == "snapshot":
            name += "-" + (source.stem.removeprefix("iter_").lstrip("0") or "0")
        return run.with_name(name + suffix)
    return source.with_name(source.stem + suffix)
