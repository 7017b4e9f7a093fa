"""`dd pretrain`: train a pool of networks on real data for the pretrained init modes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ddcli.config import OUTPUT
from ddcli.pool.pretrain import PretrainResult, pretrain
from ddcli.pool.recipe import PretrainRecipe, recipe_flags
from ddcli.cli._app import app
from ddcli.cli._options import (DataRoot, DatasetArg, Device, Json, Model, Quiet, Seed,
                                config_options, parse_model_args)
from ddcli.cli._progress import PretrainProgress
from ddcli.infra.signals import rearm_interrupt

Opt = typer.Option


EXAMPLES = """
# a pool of 10 LeNets, each trained 2 epochs on MNIST
dd pretrain mnist --n-nets 10 --real-epochs 2 -o mnist-pool
# grow it to 20 nets (the 10 already there are kept)
dd pretrain mnist --n-nets 20 --real-epochs 2 -o mnist-pool
# ConvNets of width 32 on CIFAR-10, SGD with momentum
dd pretrain cifar10 --model convnet --model-arg width=32 --optimizer sgd -o cifar-pool
# expert trajectories for trajectory matching (MTT): weights after each of 50 epochs
dd pretrain cifar10 --model convnet --optimizer sgd --lr 0.01 --real-epochs 50 --trajectories -o cifar-experts
"""


@app.command("pretrain", epilog=EXAMPLES)
@config_options(("Arguments", "Options", OUTPUT), recipe_flags(), negatable=False)
def pretrain_command(
    dataset: DatasetArg,
    out: Annotated[Path, Opt("--out", "-o", help="Pool folder (created; nets already in it are kept).", show_default=False, rich_help_panel="Output")],
    model: Model = None,
    model_arg: Annotated[Optional[list[str]], Opt("--model-arg", metavar="KEY=VALUE", help="A model option, e.g. width=32 for convnet (repeatable).", show_default=False)] = None,
    n_nets: Annotated[int, Opt(help="Networks the pool should hold.")] = 10,
    init_scheme: Annotated[str, Opt(help="Weight init of every net (as in dd distill).")] = "xavier",
    nets_per_batch: Annotated[Optional[int], Opt(help="Networks trained together with torch.func.vmap.", show_default="1 on CPU, 16 on a GPU")] = None,
    seed: Seed = None,
    data_root: DataRoot = None,
    device: Device = None,
    quiet: Quiet = False,
    json_out: Json = False,
    **flags: Any,  # one per PretrainRecipe option (added by config_options); None: not given
) -> None:
    """Train a pool of networks on real data (for --init-mode pretrained-fixed/-random)."""
    rearm_interrupt()  # Ctrl-C works even if started with `&` from a script
    recipe = PretrainRecipe(**{f.key: flags[f.dest] for f in recipe_flags()
                               if flags.get(f.dest) is not None})
    with PretrainProgress(quiet=quiet or json_out) as progress:
        result = pretrain(dataset, out=out, n_nets=n_nets, model=model, recipe=recipe,
                          model_kwargs=parse_model_args(model_arg or []),
                          init_scheme=init_scheme, seed=seed or 0, nets_per_batch=nets_per_batch,
                          data_root=data_root, device=device or "auto", callbacks=progress)
    print_pretrain_result(result, json_out)


def print_pretrain_result(result: PretrainResult, json_out: bool) -> None:
    pool = result.pool
    accs = [n.test_acc for n in pool.nets]
    record = {
        "pool": str(pool.path), "dataset": pool.dataset, "model": pool.model.get("name"),
        "n_nets": len(pool.nets), "trained": result.trained, "kept": result.kept,
        "test_acc": {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs)},
        "recipe": pool.recipe, "elapsed_s": round(result.elapsed, 2),
        "train_s": round(result.train_seconds, 2),
        "cpu_s": round(result.cpu_seconds, 2),
        "pool_cpu_s": (None if result.pool_cpu_seconds is None
                       else round(result.pool_cpu_seconds, 2)),
        "s_per_net_epoch": (round(result.seconds_per_net_epoch, 3)
                            if result.trained else None),
    }
    if json_out:
        typer.echo(json.dumps(record))
        return
    speed = (f"; {result.seconds_per_net_epoch:.2f} s per net-epoch"
             if result.trained else "")
    typer.echo(
        f"{pool.path}: {len(pool.nets)} {record['model']} nets on {pool.dataset} "
        f"({len(result.trained)} trained now, {len(result.kept)} kept), test accuracy mean "
        f"{record['test_acc']['mean']:.2%} (min {min(accs):.2%}, max {max(accs):.2%}), "
        f"{result.elapsed:.0f}s{speed}; {_cpu_hours(result)}")


def _cpu_hours(result: PretrainResult) -> str:
    now = f"{result.cpu_seconds / 3600:.2f} CPU-hours now"
    total = result.pool_cpu_seconds
    if total is None:
        return now + " (some kept nets predate the record of CPU time)"
    return now + f", {total / 3600:.2f} for the whole pool"
