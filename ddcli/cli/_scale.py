"""`dd distill --nproc N` and `--dry-run`: launching torchrun, printing memory and time
estimates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from ddcli import layering
from ddcli.core import memory as _memory
from ddcli.core.objectives import make_objective
from ddcli.errors import ConfigError
from ddcli.infra import device as _device
from ddcli.infra.device import resolve_device
from ddcli.config import DistillConfig, load_config_file
from ddcli.data import load_dataset
from ddcli.models import create_model
from ddcli.infra.text import count


def forward_args(ctx: typer.Context) -> list[str]:
    """The command line of this `dd distill` call, for the processes torchrun starts.

    Rebuilt from the parsed parameters (not ``sys.argv``) so that it is exact however
    the command was invoked. ``--dry-run`` and ``--nproc`` are dropped: torchrun's own
    parser takes ``--nproc`` for an ambiguous abbreviation, and the processes read their
    number from torchrun's environment instead.
    """
    args = [ctx.info_name or "distill"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("nproc", "dry_run") or value is None:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            if param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                args.append(param.opts[0])
        else:
            for item in value if getattr(param, "multiple", False) else [value]:
                args += [param.opts[0], str(item)]
    return args


def resumed_config(run_dir: Path, overrides: dict[str, dict[str, Any]]) -> DistillConfig | None:
    """The config a resume of ``run_dir`` would run with (None if the folder has none)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    return layering.resumed_config(load_config_file(path), overrides)


def print_dry_run(cfg: DistillConfig, *, nproc: int, json_out: bool) -> None:
    """Estimate each memory mode's peak for ``cfg`` (see ``ddcli.core.memory``) and the
    run's wall time (``ddcli.engine.timing``), and print them."""
    if not make_objective(cfg, None).unrolls:
        raise ConfigError(f"--dry-run estimates an unroll's memory; --objective "
                          f"{cfg.objective.kind} unrolls nothing (its memory is a few "
                          "forward passes of the real batches)")
    data = load_dataset(cfg.data.dataset, root=cfg.data.data_root)
    model = create_model(cfg.model_name(data.name), in_channels=data.in_channels,
                         num_classes=data.num_classes, image_size=data.image_size,
                         **cfg.model.kwargs)
    device = resolve_device(cfg.run.device)
    est = _memory.estimate_memory(cfg, model=model, train_size=data.train_x.shape[0],
                                  test_size=data.test_x.shape[0], nproc=nproc,
                                  device_type=device.type)
    # What this process holds once it has loaded the data and used what a run uses: the
    # framework's share of a training process's RSS, which the tensor counts leave out.
    _memory.warm_framework(model)
    baseline = _current_rss() if device.type == "cpu" else 0
    chosen = cfg.run.unroll_memory
    timing, not_timed = _time_estimate(cfg, data, nproc, est.modes[chosen], device)
    if json_out:
        typer.echo(json.dumps({
            "dry_run": True, "unroll_memory": chosen, "processes": nproc,
            "estimate_bytes": est.to_dict(),
            "peak_rss_bytes": ({m: baseline + v - est.data for m, v in est.modes.items()}
                               if baseline else None),
            "time_estimate": timing.to_dict() if timing else None,
            **({"time_not_measured": not_timed} if not_timed else {}),
        }))
        return
    fmt = _memory.format_bytes
    window = (f" (the last {est.differentiated} differentiated)"
              if est.differentiated < est.steps else "")
    state = f" and update-rule state {fmt(est.state)}" if est.state else ""
    typer.echo(
        f"memory estimate per process: {data.name} / {cfg.model_name(data.name)}, "
        f"T = {count(est.steps, 'GD step')}{window}, {count(est.nets, 'net')} at once, real batch "
        f"{est.real_batch // (data.in_channels * data.image_size ** 2 * 4)}, "
        f"{count(nproc, 'process')}, on {device}")
    header = f"  {'mode':10s} {'graphs':>12s} {'tensors':>12s}"
    header += f" {'peak RSS':>12s}" if baseline else ""
    typer.echo(header)
    for mode, total in est.modes.items():
        line = f"  {mode:10s} {fmt(est.graphs[mode]):>12s} {fmt(total):>12s}"
        line += f" {fmt(baseline + total - est.data):>12s}" if baseline else ""
        typer.echo(line + ("   <- this run" if mode == chosen else ""))
    typer.echo(
        f"  held by every mode: real data {fmt(est.data)}, synthetic set with Adam state "
        f"{fmt(est.synthetic)}, weights {fmt(est.weights)}{state} per net; one inner step's graph "
        f"{fmt(est.step_graph)}, the outer loss's {fmt(est.outer_graph)}")
    typer.echo(
        "  estimated by counting the tensors autograd saves for one inner step and for the "
        "outer loss on the meta device (no compute); 'peak RSS' (CPU) adds what this process "
        "holds after loading the data and one tiny step; allocator slack is not counted")
    typer.echo(_time_line(timing, not_timed, nproc))


def _time_estimate(cfg: DistillConfig, data, nproc: int, peak: int, device):
    """The run's expected wall time, from a few timed iterations; (None, why) when they
    would not fit in the memory that is free now."""
    from ddcli.engine.timing import estimate_time

    free = _device.available_memory(device)
    if free is not None and peak > free:
        fmt = _memory.format_bytes
        return None, (f"this run's estimated peak {fmt(peak)} exceeds the {fmt(free)} free "
                      f"on {device}")
    return estimate_time(cfg, data=data, nproc=nproc), None


def _time_line(t, not_timed: str | None, nproc: int) -> str:
    if t is None:
        return f"time estimate: not measured: {not_timed}"
    from ddcli.engine.timing import format_duration

    share = f" (one process's share of the nets, of {nproc})" if nproc > 1 else ""
    evals = (f" + {t.evaluations:,} evaluations x {t.s_per_eval:.3g} s"
             if t.evaluations else "")
    return (f"time estimate: about {format_duration(t.total_s)} = {t.iterations:,} iterations "
            f"x {t.s_per_iteration:.3g} s{evals}; timed {t.measured} iteration"
            f"{'s' if t.measured > 1 else ''} after a warm-up{share}; loading data and "
            "writing checkpoints not counted")


def _current_rss() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
