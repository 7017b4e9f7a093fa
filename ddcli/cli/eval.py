"""`dd eval`: train fresh networks on a distilled set and report test accuracy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, List, Optional

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ddcli.evaluate._sets import PixelSpaceWarning
from ddcli.evaluate.pool_eval import PoolEvalReport
from ddcli.evaluate import BASELINES, EvalConfig, EvalReport, evaluate, record_report, sidecar_path
from ddcli.infra.io import check_writable
from ddcli.cli._app import app
from ddcli.cli._options import DataRoot, Device, Json, Quiet, Seed, config_options
from ddcli.config import OUTPUT
from ddcli.evaluate._report import BASELINE_PANEL, OPTIONS, PROTOCOL, TRAIN, eval_flags
from ddcli.evaluate.pool_report import pool_report_lines
from ddcli.cli._progress import EvalProgress, stderr
from ddcli.infra.signals import rearm_interrupt
from ddcli.infra.text import count

Opt = typer.Option
# The --help panels in order; each option of EvalConfig sits in the one its field names.
PANELS = ("Arguments", OPTIONS, PROTOCOL, BASELINE_PANEL, TRAIN, OUTPUT)


EXAMPLES = """
# replay the learned steps on fresh nets
dd eval m.safetensors
# SGD on the images, with another model: a cross-architecture row
dd eval m.safetensors --protocol train --model resnet18
# any .pt / .npz / ImageFolder set, as one JSON object
dd eval set.npz --dataset mnist --json
# a run's last checkpoint (the run goes on), beside random real images
dd eval runs/dm-mnist-ipc1 --protocol dc --baseline random-real
"""


@app.command("eval", epilog=EXAMPLES)
@config_options(PANELS, eval_flags(), negatable=False)
def eval_command(
    path: Annotated[Path, typer.Argument(help="A bundle (.safetensors), a .pt or .npz set, an ImageFolder directory, or a run folder (the set of its last checkpoint, while it runs too).", show_default=False)],
    seed: Seed = None,
    baseline: Annotated[Optional[List[str]], Opt("--baseline", help=f"Also evaluate a real-data baseline; repeatable: {', '.join(BASELINES)}.", show_default=False, rich_help_panel=BASELINE_PANEL)] = None,
    compare: Annotated[bool, Opt(help="Evaluate every baseline.", rich_help_panel=BASELINE_PANEL)] = False,
    dataset: Annotated[Optional[str], Opt(help="Test set and normalisation (needed for .pt/.npz/folder sets).", show_default="the bundle's")] = None,
    data_root: DataRoot = None,
    device: Device = None,
    pool: Annotated[Optional[Path], Opt(help="Pretrained, adapt and attack bundles: the pool folder.", show_default="the one recorded in the bundle")] = None,
    record: Annotated[bool, Opt(help="Also write the results to the sidecar <set>.eval.json (never into the bundle).", rich_help_panel=OUTPUT)] = False,
    quiet: Quiet = False,
    json_out: Json = False,
    **flags: Any,  # one per EvalConfig option (added by config_options); None: not given
) -> None:
    """Train fresh networks on a distilled set; print test accuracy (mean ± std over nets)."""
    rearm_interrupt()  # Ctrl-C works even if started with `&` from a script
    given = {f.key: flags[f.dest] for f in eval_flags() if flags.get(f.dest) is not None}
    cfg = EvalConfig(seed=0 if seed is None else seed, device=device or "auto",
                     baselines=tuple(BASELINES if compare else baseline or ()), **given)
    if record:  # before the work, not after it
        check_writable(sidecar_path(path), "the eval record")
    # A set without a pixel-space record is evaluated with a loud warning; it is said as
    # one `warning:` line once the evaluation stands (an error makes it moot). A line per
    # row, and a bar with an ETA for each long step (on_progress events).
    with warnings.catch_warnings(record=True) as caught, \
            EvalProgress(quiet=quiet or json_out) as progress:
        warnings.simplefilter("always", PixelSpaceWarning)
        report = evaluate(path, cfg, dataset=dataset, data_root=data_root, pool=pool,
                          callbacks=progress)
    for w in caught:
        if issubclass(w.category, PixelSpaceWarning):
            stderr.print(f"warning: {w.message}", soft_wrap=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for line in getattr(report, "warnings", ()):
        stderr.print(f"warning: {line}", soft_wrap=True, markup=False)
    if isinstance(report, PoolEvalReport):
        # Pool bundles: held-out nets before and after the distilled steps, against the
        # same steps on random real images.
        for line in [json.dumps(report.to_dict())] if json_out else pool_report_lines(report):
            typer.echo(line)
        return
    if record:
        where = record_report(report, sidecar_path(path))  # a run folder's: beside it
        if not json_out and not quiet:
            stderr.print(f"recorded to {where}")
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    print_report(report, Console(highlight=False, soft_wrap=False,
                                 width=None if Console().is_terminal else 120))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _split(report: EvalReport) -> str:
    return "validation split, held-out training" if report.split == "validation" else "test set"


def _threads(n) -> str:
    return count(n, "thread") if isinstance(n, int) else "? threads"


def print_report(report: EvalReport, console: Console) -> None:
    """The header line, the results table, the replay curve and the notes."""
    s = report.settings
    what = (f"{count(s['steps'], 'step')} x {count(s['images_per_step'], 'image')}"
            + (f", {count(s['gd_steps'], 'GD step')}" if report.protocol == "replay" else
               f", {count(s['train_epochs'], 'epoch')}, lr {s['train_lr']:.4g}, "
               f"batch {s['batch_size']}"
               + (f", augment {s['augment']}" if s.get("augment", "none") != "none" else "")))
    console.print(f"{report.source}: {report.protocol} protocol · {report.model['name']} · "
                  f"{report.dataset} {_split(report)} ({report.test_size:,} images) · {what} · "
                  f"seed {s['seed']}", soft_wrap=True)
    made = report.provenance.get("set")
    if made:
        v = made.get("versions", {})
        commit = f" ({made['git_commit'][:12]})" if made.get("git_commit") else ""
        console.print(f"made {made.get('date', '?')} with ddcli {v.get('ddcli', '?')}{commit}, "
                      f"torch {v.get('torch', '?')} on {made.get('device', '?')} "
                      f"({_threads(made.get('threads'))})"
                      + (f", preset {made['preset']}" if made.get("preset") else ""),
                      soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, title_justify="left")
    for col, justify in (("set", "left"), ("nets", "left"), ("n", "right"),
                         ("acc % (mean ± std)", "right"), ("min", "right"), ("max", "right")):
        table.add_column(col, justify=justify)
    margin_col = report.row("random-real") is not None
    if margin_col:
        table.add_column("vs random-real", justify="right")
    base = report.row("random-real")
    for row in report.rows:
        name, nets = (f"knn on {row.group}", "none: 1-NN") if row.name == "knn" else (
            row.name, row.group)
        cells = [name, nets, str(row.n), f"{_pct(row.mean)} ± {_pct(row.std)}",
                 _pct(row.min), _pct(row.max)]
        if margin_col:
            # only the primary row: the baselines start from the primary row's nets
            cells.append(f"{100 * (row.mean - base.mean):+.2f}" if row is report.primary else "")
        table.add_row(*cells)
    console.print(table)
    curves = [r for r in report.rows if r.curve is not None]
    if curves:
        console.print(_curve_table(report, curves))
    if report.ddranking:
        d, full = report.ddranking, report.ddranking["full_data"]
        console.print(f"DD-Ranking (fractions): IOR {d['ior']:+.4f}, HLR {d['hlr']:.4f}, LRS "
                      f"{d['lrs']:.4f}; full data {100 * sum(full['accuracies']) / len(full['accuracies']):.2f}% "
                      f"({full['epochs']} epochs{', cached' if full['cached'] else ''})",
                      soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True)


def _curve_table(report: EvalReport, rows) -> Table:
    steps = report.settings["steps"]
    table = Table(box=box.SIMPLE_HEAD, title="test accuracy % during replay (mean ± std)",
                  title_justify="left")
    table.add_column("after", justify="left")
    for row in rows:
        table.add_column(row.group, justify="right")
    for i, t in enumerate(rows[0].at):
        when = "before training" if t == 0 else (
            f"epoch {t // steps} (step {t})" if t % steps == 0 else f"step {t}")
        cells = []
        for row in rows:
            accs = row.curve[i]
            cells.append(f"{_pct(float(np.mean(accs)))} ± {_pct(float(np.std(accs)))}")
        table.add_row(when, *cells)
    return table
