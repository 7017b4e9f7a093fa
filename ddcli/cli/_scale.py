"""`dd distill --nproc N` and `--dry-run`: launching torchrun, printing the memory and time
estimates that ``ddcli.engine.dry_run`` measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ddcli import layering
from ddcli.core import memory as _memory
from ddcli.config import DistillConfig, load_config_file
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
    """Print what ``ddcli.engine.dry_run.dry_run`` measures for ``cfg``."""
    from ddcli.engine.dry_run import dry_run

    r = dry_run(cfg, nproc=nproc)
    est, chosen = r.estimate, cfg.run.unroll_memory
    if json_out:
        typer.echo(json.dumps({
            "dry_run": True, "unroll_memory": chosen, "processes": nproc,
            "estimate_bytes": est.to_dict(), "peak_rss_bytes": r.peak_rss(),
            "time_estimate": r.timing.to_dict() if r.timing else None,
            **({"time_not_measured": r.not_timed} if r.not_timed else {}),
        }))
        return
    fmt = _memory.format_bytes
    window = (f" (the last {est.differentiated} differentiated)"
              if est.differentiated < est.steps else "")
    state = f" and update-rule state {fmt(est.state)}" if est.state else ""
    typer.echo(
        f"memory estimate per process: {r.dataset} / {r.model}, "
        f"T = {count(est.steps, 'GD step')}{window}, {count(est.nets, 'net')} at once, "
        + (f"real batch {r.real_batch_images}" if r.real_batch_images
           else "no real batch (the outer loss is a distance to expert weights)")
        + f", {count(nproc, 'process')}, on {r.device}")
    peaks = r.peak_rss()
    header = f"  {'mode':10s} {'graphs':>12s} {'tensors':>12s}"
    header += f" {'peak RSS':>12s}" if peaks else ""
    typer.echo(header)
    for mode, total in est.modes.items():
        line = f"  {mode:10s} {fmt(est.graphs[mode]):>12s} {fmt(total):>12s}"
        line += f" {fmt(peaks[mode]):>12s}" if peaks else ""
        typer.echo(line + ("   <- this run" if mode == chosen else ""))
    typer.echo(
        f"  held by every mode: real data {fmt(est.data)}, synthetic set with Adam state "
        f"{fmt(est.synthetic)}, weights {fmt(est.weights)}{state} per net; one inner step's graph "
        f"{fmt(est.step_graph)}, the outer loss's {fmt(est.outer_graph)}")
    typer.echo(
        "  estimated by counting the tensors autograd saves for one inner step and for the "
        "outer loss on the meta device (no compute); 'peak RSS' (CPU) adds what this process "
        "holds after loading the data and one tiny step; allocator slack is not counted")
    typer.echo(_time_line(r.timing, r.not_timed, nproc))


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
