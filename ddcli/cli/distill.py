"""`dd distill`: learn a synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ddcli import presets
from ddcli.infra import distributed as _distributed
from ddcli.engine import loop as _engine
from ddcli.config import DistillConfig, load_config_file, merge_dicts
from ddcli.errors import DivergedError, Interrupted
from ddcli.cli._app import app
from ddcli.cli._options import DataRoot, Device, Json, Quiet, Seed
from ddcli.cli._progress import DistillProgress
from ddcli.cli._scale import forward_args, print_dry_run, resumed_config

# flag name -> (config section, key)
FLAG_TO_CONFIG = {
    "dataset": ("data", "dataset"),
    "data_root": ("data", "data_root"),
    "batch_size": ("data", "batch_size"),
    "augment": ("data", "augment"),
    "model": ("model", "name"),
    "init_scheme": ("model", "init_scheme"),
    "steps": ("synth", "steps"),
    "epochs": ("synth", "epochs"),
    "images_per_class": ("synth", "images_per_class"),
    "step_lr": ("synth", "step_lr"),
    "meta_lr": ("optim", "meta_lr"),
    "decay_every": ("optim", "decay_every"),
    "decay_factor": ("optim", "decay_factor"),
    "iterations": ("optim", "iterations"),
    "real_epochs": ("optim", "real_epochs"),
    "init_mode": ("init", "mode"),
    "seed": ("init", "seed"),
    "n_nets": ("init", "n_nets"),
    "sample_n_nets": ("init", "sample_n_nets"),
    "pool": ("init", "pool"),
    "pool_index": ("init", "pool_index"),
    "pool_holdout": ("init", "pool_holdout"),
    "objective": ("objective", "kind"),
    "source_dataset": ("objective", "source_dataset"),
    "attack_class": ("objective", "attack_class"),
    "target_class": ("objective", "target_class"),
    "device": ("run", "device"),
    "unroll_memory": ("run", "unroll_memory"),
    "checkpoint_every": ("run", "checkpoint_every"),
    "snapshot_every": ("run", "snapshot_every"),
    "eval_every": ("run", "eval_every"),
    "eval_nets": ("run", "eval_nets"),
    "log_every": ("run", "log_every"),
    "nproc": ("run", "nproc"),
    "batch_nets": ("run", "batch_nets"),
}

Opt = typer.Option


def _flags_to_overrides(flags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, value in flags.items():
        if value is None or name not in FLAG_TO_CONFIG:
            continue
        section, key = FLAG_TO_CONFIG[name]
        out.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    # --real-epochs given on the command line replaces an --iterations budget from a file
    if "real_epochs" in out.get("optim", {}) and flags.get("iterations") is None:
        out["optim"]["iterations"] = None
    return out


def build_config(config_file: Optional[Path], flags: dict[str, Any],
                 base: dict[str, Any] | None = None) -> DistillConfig:
    """Defaults, then ``base`` (a preset), then the config file, then flags."""
    merged = DistillConfig().to_dict()
    if base:
        merged = merge_dicts(merged, base)
    if config_file is not None:
        merged = merge_dicts(merged, load_config_file(config_file))
    merged = merge_dicts(merged, _flags_to_overrides(flags))
    return DistillConfig.from_dict(merged).validate()


@app.command("distill")
def distill_command(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Argument(
        help="mnist, fashion-mnist, cifar10, cifar100, svhn, or folder:PATH. (default: mnist)",
        show_default=False)] = None,
    steps: Annotated[Optional[int], Opt(help="GD steps per pass, each with its own images. (default: 10)", show_default=False)] = None,
    epochs: Annotated[Optional[int], Opt(help="Passes over the steps; T = steps x epochs rates. (default: 3)", show_default=False)] = None,
    images_per_class: Annotated[Optional[int], Opt("--images-per-class-per-step", "--ipc", help="Synthetic images per class in each step. (default: 1)", show_default=False)] = None,
    model: Annotated[Optional[str], Opt(help="lenet, alexcifarnet, convnet or mlp. (default: the paper's for the dataset)", show_default=False)] = None,
    init_scheme: Annotated[Optional[str], Opt(help="Weight init: xavier, xavier-uniform, kaiming, kaiming-out, orthogonal, normal, default. (default: xavier)", show_default=False)] = None,
    init_mode: Annotated[Optional[str], Opt(help="fixed (one known init), random (fresh inits every iteration), pretrained-fixed (one --pool net) or pretrained-random (--sample-n-nets pool nets every iteration). (default: fixed)", show_default=False)] = None,
    n_nets: Annotated[Optional[int], Opt(help="Random init: nets drawn per iteration. (default: 1)", show_default=False)] = None,
    sample_n_nets: Annotated[Optional[int], Opt(help="Random and pretrained-random init: nets used per iteration; gradients averaged. (default: 1)", show_default=False)] = None,
    pool: Annotated[Optional[Path], Opt(help="Pretrained modes: a pool folder made by `dd pretrain`.", show_default=False)] = None,
    pool_index: Annotated[Optional[int], Opt(help="pretrained-fixed: which pool net to start from. (default: 0)", show_default=False)] = None,
    pool_holdout: Annotated[Optional[float], Opt(help="Pretrained modes: fraction of the pool held out for evaluation, never trained on. (default: 0.2)", show_default=False)] = None,
    objective: Annotated[Optional[str], Opt(help="distill, adapt (pool pretrained on another --source-dataset) or attack (--attack-class A --target-class B). (default: distill)", show_default=False)] = None,
    source_dataset: Annotated[Optional[str], Opt(help="adapt: the dataset the pool was pretrained on (checked against the pool).", show_default=False)] = None,
    attack_class: Annotated[Optional[int], Opt(help="attack: the class A to make the nets misclassify.", show_default=False)] = None,
    target_class: Annotated[Optional[int], Opt(help="attack: the class B that A should be predicted as.", show_default=False)] = None,
    seed: Seed = None,
    step_lr: Annotated[Optional[float], Opt("--step-lr", "--distill-lr", help="Initial value of every learned GD rate. (default: 0.02)", show_default=False)] = None,
    meta_lr: Annotated[Optional[float], Opt("--meta-lr", "--lr", help="Adam step size for the images and rates (the meta-optimizer). (default: 0.01)", show_default=False)] = None,
    decay_every: Annotated[Optional[float], Opt(help="StepLR period, in real-data epochs. (default: 40)", show_default=False)] = None,
    decay_factor: Annotated[Optional[float], Opt(help="StepLR factor. (default: 0.5)", show_default=False)] = None,
    batch_size: Annotated[Optional[int], Opt(help="Real images per outer iteration. (default: 1024)", show_default=False)] = None,
    iterations: Annotated[Optional[int], Opt(help="Budget in outer iterations (overrides --real-epochs).", show_default=False)] = None,
    real_epochs: Annotated[Optional[float], Opt(help="Budget in passes over the real training set. (default: 400)", show_default=False)] = None,
    augment: Annotated[Optional[bool], Opt("--augment/--no-augment", help="Pad-crop-flip the real batches (the reference does for CIFAR). (default: off)", show_default=False)] = None,
    data_root: DataRoot = None,
    device: Device = None,
    unroll_memory: Annotated[Optional[str], Opt(help="Meta-gradient memory mode: full, stepwise or recompute (bounded memory; see --dry-run). (default: full)", show_default=False)] = None,
    batch_nets: Annotated[Optional[bool], Opt("--batch-nets/--no-batch-nets", help="Evaluate the --sample-n-nets nets together (torch.func.vmap) rather than one by one. (default: on)", show_default=False)] = None,
    nproc: Annotated[Optional[int], Opt(help="Split the sampled nets over N processes (runs torchrun for you; gloo on CPU, nccl on GPUs). (default: 1)", show_default=False)] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the estimated peak memory of each --unroll-memory mode for this config, and exit without training.")] = False,
    checkpoint_every: Annotated[Optional[int], Opt(help="Checkpoint every N iterations (0: only at the end). (default: 50)", show_default=False)] = None,
    snapshot_every: Annotated[Optional[int], Opt(help="Save images and rates every N iterations to RUN/snapshots/ for `dd visualize --run` (0: never). (default: 0)", show_default=False)] = None,
    eval_every: Annotated[Optional[int], Opt(help="Replay-evaluate on the full test set every N iterations (0: never). (default: 0)", show_default=False)] = None,
    eval_nets: Annotated[Optional[int], Opt(help="Random init: nets per periodic evaluation. (default: 4)", show_default=False)] = None,
    log_every: Annotated[Optional[int], Opt(help="Write metrics.jsonl every N iterations. (default: 10)", show_default=False)] = None,
    out: Annotated[Optional[Path], Opt("--out", "-o", help="Bundle path. (default: a descriptive name here)", show_default=False)] = None,
    run_dir: Annotated[Optional[Path], Opt(help="Run folder for checkpoints and metrics. (default: <bundle>.run)", show_default=False)] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in RUN_DIR from its last checkpoint.", metavar="RUN_DIR", show_default=False)] = None,
    force: Annotated[bool, Opt(help="Start afresh even if the run folder holds a checkpoint.")] = False,
    config: Annotated[Optional[Path], Opt(help="TOML or JSON file of defaults (same shape as config.json); flags override it.", show_default=False)] = None,
    preset: Annotated[Optional[str], Opt(help="Start from a named preset (see --list-presets); --config and flags override it.", show_default=False)] = None,
    list_presets: Annotated[bool, Opt("--list-presets", help="List the presets and exit.")] = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Learn a tiny synthetic training set and its learning rates; write a bundle."""
    flags = {k: v for k, v in locals().items()}
    if list_presets:
        for name, description in presets.list_presets():
            typer.echo(f"{name:22s} {description}")
        return
    if nproc is None and _distributed.inside_launcher():
        flags["nproc"] = _distributed.env_world()[1]  # recorded, so --resume relaunches alike
    overrides = _flags_to_overrides(flags)
    if resume is not None:
        cfg = resumed_config(resume, overrides)
    else:
        cfg = build_config(config, flags, base=presets.get_preset(preset) if preset else None)
    n = nproc or (cfg.run.nproc if cfg is not None else 1)
    if dry_run:
        if cfg is None:
            raise typer.BadParameter(f"{resume} has no config.json", param_hint="--resume")
        print_dry_run(cfg, nproc=n, json_out=json_out)
        return
    if n > 1 and not _distributed.inside_launcher():
        if cfg is not None:  # usage errors here, not from N processes
            _distributed.check_config(cfg, n)
        raise typer.Exit(_distributed.launch(n, forward_args(ctx)))
    main_rank = _distributed.env_world()[0] == 0
    progress = DistillProgress(quiet=quiet or json_out or not main_rank)
    with progress:
        try:
            if resume is not None:
                result = _engine.resume(resume, overrides=overrides, callbacks=progress)
            else:
                result = _engine.distill(cfg, out=out, run_dir=run_dir, callbacks=progress,
                                         force=force)
        except (Interrupted, DivergedError) as exc:
            if main_rank:
                raise
            raise typer.Exit(exc.exit_code) from None  # every rank has it; rank 0 says it
    if main_rank:
        print_result(result, json_out)


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
        "evals": [{"iteration": e.iteration, "test_acc": e.mean} for e in result.evals],
    }
    if json_out:
        typer.echo(json.dumps(record))
        return
    acc = f", replay test acc {result.evals[-1].mean:.2%}" if result.evals else ""
    typer.echo(
        f"{result.bundle_path}: {record['images']} images ({b.steps} steps x "
        f"{b.images.shape[1]}), {b.lrs.numel()} lrs, {b.dataset}/{record['model']} "
        f"{b.init_mode} init, {result.iterations} iterations in {result.elapsed:.0f}s, "
        f"loss {result.final_loss:.4f}{acc}"
    )
