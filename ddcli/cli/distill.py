"""`dd distill`: learn a synthetic dataset."""

from __future__ import annotations

import json
import shutil
import textwrap
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ddcli import config, layering, presets
from ddcli.infra import distributed as _distributed
from ddcli.engine import events as _events
from ddcli.engine import loop as _engine
from ddcli.errors import DivergedError, Interrupted
from ddcli.cli._app import app
from ddcli.cli._options import Json, Quiet, config_options, parse_model_args
from ddcli.cli._progress import DistillProgress
from ddcli.cli._scale import forward_args, print_dry_run, resumed_config
from ddcli.infra.text import count

Opt = typer.Option
START = "Start from"

# The --help panels, the common case first (the config's flags bring their own panels).
PANELS = ("Arguments", START, config.SYNTH, config.MODEL, config.BUDGET, config.DATA,
          config.OUTPUT, config.INNER, config.SCALE, config.POOLS)


# The end of --help: "# what it does" over each command (ddcli.cli._docs draws them).
EXAMPLES = """
# 300 iterations on MNIST; its run folder is m.run
dd distill mnist --iterations 300 -o m.safetensors
# a named setting (see dd distill --list-presets)
dd distill --preset soft-mnist-10
# peak memory and time of a long run, before it starts
dd distill mnist --epochs 30 --dry-run
# continue an interrupted run from its last checkpoint
dd distill --resume m.run
"""


@app.command("distill", epilog=EXAMPLES)
@config_options(PANELS)
def distill_command(
    ctx: typer.Context,
    preset: Annotated[Optional[str], Opt(help="A named preset (see --list-presets).", metavar="NAME", show_default=False, rich_help_panel=START)] = None,
    config_file: Annotated[Optional[Path], Opt("--config", help="TOML or JSON, shaped like config.json.", metavar="FILE", show_default=False, rich_help_panel=START)] = None,
    list_presets: Annotated[bool, Opt("--list-presets", help="List the presets and exit.", rich_help_panel=START)] = False,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in RUN_DIR from its last checkpoint.", metavar="RUN_DIR", show_default=False, rich_help_panel=START)] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Bundle path.", show_default="a descriptive name here", rich_help_panel=config.OUTPUT)] = None,
    run_dir: Annotated[Optional[Path], Opt(help="Checkpoints and metrics.", metavar="DIR", show_default="<bundle>.run", rich_help_panel=config.OUTPUT)] = None,
    force: Annotated[bool, Opt(help="Start afresh despite a checkpoint.", rich_help_panel=config.OUTPUT)] = False,
    tensorboard: Annotated[Optional[Path], Opt(help="Write TensorBoard logs (scalars, image grids) here.", metavar="DIR", show_default=False, rich_help_panel=config.OUTPUT)] = None,
    quiet: Quiet = False,
    json_out: Json = False,
    dry_run: Annotated[bool, Opt("--dry-run", help="Estimate peak memory and run time, then exit.", rich_help_panel=config.SCALE)] = False,
    model_arg: Annotated[Optional[list[str]], Opt("--model-arg", metavar="KEY=VALUE", help="A model option, e.g. width=32 (repeatable).", show_default=False, rich_help_panel=config.MODEL)] = None,
    **flags: Any,  # one per config flag (added by config_options); None: not given
) -> None:
    """Learn a tiny synthetic training set and its learning rates; write a bundle.

    Settings come from the defaults, then --preset, then --config, then the flags.
    """
    if list_presets:
        typer.echo(preset_listing(shutil.get_terminal_size().columns))
        return
    if flags["nproc"] is None and _distributed.inside_launcher():
        flags["nproc"] = _distributed.env_world()[1]  # recorded, so --resume relaunches alike
    overrides = config.flag_overrides(flags)
    if model_arg:
        overrides.setdefault("model", {})["kwargs"] = parse_model_args(model_arg)
    if resume is not None:
        cfg = resumed_config(resume, overrides)
    else:
        cfg = layering.build_config(preset=preset, config_file=config_file, overrides=overrides)
    n = flags["nproc"] or (cfg.run.nproc if cfg is not None else 1)
    if dry_run:
        if cfg is None:
            raise typer.BadParameter(f"{resume} has no config.json", param_hint="--resume")
        print_dry_run(cfg, nproc=n, json_out=json_out)
        return
    main_rank = _distributed.env_world()[0] == 0
    board = _tensorboard_logger(tensorboard) if main_rank else None
    if n > 1 and not _distributed.inside_launcher():
        if cfg is not None:  # usage errors here, not from N processes
            _distributed.check_config(cfg, n)
        raise typer.Exit(_distributed.launch(n, forward_args(ctx)))
    progress = DistillProgress(quiet=quiet or json_out or not main_rank)
    with progress, board or nullcontext():
        callbacks = _events.Callbacks(progress, board)
        try:
            if resume is not None:
                result = _engine.resume(resume, overrides=overrides, callbacks=callbacks,
                                        out=out, force=force)
            else:
                result = _engine.distill(cfg, out=out, run_dir=run_dir, callbacks=callbacks,
                                         force=force, preset=preset)
        except (Interrupted, DivergedError) as exc:
            if main_rank:
                raise
            raise typer.Exit(exc.exit_code) from None  # every rank has it; rank 0 says it
    if main_rank:
        print_result(result, json_out)


def preset_listing(width: int = 80) -> str:
    """Each preset's name and its description, wrapped to ``width`` columns under it."""
    names = presets.list_presets()
    indent = max(len(name) for name, _ in names) + 2
    return "\n".join(
        textwrap.fill(description, max(width, indent + 30), initial_indent=f"{name:{indent}s}",
                      subsequent_indent=" " * indent, break_on_hyphens=False)
        for name, description in names)


def _tensorboard_logger(log_dir: Path | None):
    """The TensorBoard callbacks for --tensorboard, made before any work, even before
    --nproc starts its processes (the package is optional: a missing one is one line now)."""
    if log_dir is None:
        return None
    from ddcli.tensorboard import TensorBoardLogger

    return TensorBoardLogger(log_dir)


def print_result(result: _engine.DistillResult, json_out: bool) -> None:
    b = result.bundle
    record = {
        "bundle": str(result.bundle_path),
        "run_dir": str(result.run_dir),
        "dataset": b.dataset,
        "model": b.model.get("name"),
        "init_mode": b.init_mode,
        "images": int(b.images.shape[0] * b.images.shape[1]),
        "steps": b.steps,
        "epochs": b.epochs,
        "iterations": result.iterations,
        "final_loss": result.final_loss,
        "elapsed_s": round(result.elapsed, 2),
        "lrs": {"min": b.lrs.min().item(), "mean": b.lrs.mean().item(), "max": b.lrs.max().item()},
        "evals": [{"iteration": e.iteration, e.key: e.mean} for e in result.evals],
        "provenance": {k: v for k, v in b.provenance.items() if k != "earlier"},
    }
    if json_out:
        typer.echo(json.dumps(record))
        return
    from ddcli.models import model_label  # your own model by its factory's name

    last = result.evals[-1] if result.evals else None
    acc = f", replay {last.split} acc {last.mean:.2%}" if last else ""
    typer.echo(
        f"{result.bundle_path}: {count(record['images'], 'image')} "
        f"({count(b.steps, 'step')} x {b.images.shape[1]}), {count(b.lrs.numel(), 'lr')}, "
        f"{b.dataset}/{model_label(record['model'])} {b.init_mode} init, "
        f"{count(result.iterations, 'iteration')} in {result.elapsed:.0f}s, "
        f"loss {result.final_loss:.4f}{acc}"
    )
