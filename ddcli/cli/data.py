"""`dd data`: the registered datasets, where each is looked for, whether its files are there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from ddcli.cli._app import app
from ddcli.cli._options import DataRoot, Json

Opt = typer.Option

EXAMPLES = """
# every dataset: where it is looked for, and whether its files are there
dd data
# read MNIST's files as training would (exit 1 if they are missing or invalid)
dd data mnist --check --data-root /data
"""


@app.command("data", epilog=EXAMPLES)
def data_command(
    names: Annotated[Optional[List[str]], typer.Argument(help="Datasets to look for.", metavar="DATASET", show_default="every registered one")] = None,
    check: Annotated[bool, Opt("--check", help="Also read each present set's files, as training would, to check they are valid.")] = False,
    data_root: DataRoot = None,
    json_out: Json = False,
) -> None:
    """List the datasets, where each is looked for, whether its files are there, and how to
    get missing ones without downloading.

    Named datasets that are missing or invalid make the command exit 1.
    """
    # Imported here: the library's data modules pull in torch, which `dd --help` doesn't need.
    from ddcli.data import dataset_info, list_datasets
    from ddcli.data._api import offline
    from ddcli.data.status import data_root_report, dataset_status

    root, source = data_root_report(data_root)
    chosen = [n.strip().lower() for n in names] if names else list_datasets()
    known = [n for n in chosen if dataset_info(n) is not None]  # unknown names raise (exit 2)
    statuses = [dataset_status(n, root=root, check=check) for n in known]
    unusable = [s for s in statuses if not s.usable]
    if json_out:
        typer.echo(json.dumps({"data_root": str(root), "data_root_from": source,
                               "downloads": not offline(),
                               "datasets": [_record(s) for s in statuses]}))
    else:
        _print(root, source, not offline(), statuses)
    if names and unusable:
        raise _not_usable(unusable)


def _print(root: Path, source: str, downloads: bool, statuses: list[Any]) -> None:
    other = "" if source == "--data-root" else "; --data-root DIR or $DDCLI_DATA_ROOT to change"
    typer.echo(f"data root: {root} (from {source}{other})")
    typer.echo("downloads: " + ("on, where files are missing (DDCLI_OFFLINE=1 turns them off)"
                                if downloads else "off (DDCLI_OFFLINE)"))
    for s in statuses:
        i = s.info
        typer.echo(f"\n{i.name}: {i.in_channels}x{i.image_size}x{i.image_size}, "
                   f"{i.num_classes} classes, model {i.default_model}")
        if s.state == "missing":
            typer.echo(f"  missing: {', '.join(s.missing)}")
            typer.echo(f"  looked in: {', '.join(map(str, s.looked_in))}")
            typer.echo(f"  offline: {s.offline_hint()}")
        elif s.state == "invalid":
            typer.echo(f"  invalid: {s.error}")
            typer.echo(f"  offline: {s.offline_hint()}")
        elif s.state == "ok":
            typer.echo(f"  ok: {s.found} ({s.sizes[0]} training, {s.sizes[1]} test images)")
        else:
            typer.echo(f"  present: {s.found} (--check reads them)")
    from ddcli.data._api import DEFAULT_MODEL

    typer.echo(f"\nfolder:PATH loads any ImageFolder tree with train/ and test/ "
               f"(model {DEFAULT_MODEL}).")


def _record(s: Any) -> dict[str, Any]:
    i = s.info
    return {"name": i.name, "in_channels": i.in_channels, "image_size": i.image_size,
            "num_classes": i.num_classes, "default_model": i.default_model, "state": s.state,
            "found": None if s.found is None else str(s.found),
            "looked_in": [str(p) for p in s.looked_in], "missing": list(s.missing),
            "error": s.error, "train": s.sizes[0] if s.sizes else None,
            "test": s.sizes[1] if s.sizes else None,
            "offline": None if s.usable else s.offline_hint()}


def _not_usable(statuses: list[Any]) -> Exception:
    from ddcli.errors import DatasetNotFoundError

    listed = ", ".join(f"{s.info.name} ({s.state})" for s in statuses)
    return DatasetNotFoundError(f"not usable here: {listed}; see above for where each is "
                                "looked for and how to get it")
