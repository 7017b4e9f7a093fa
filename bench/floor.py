"""The FLOP floor of one outer iteration: its FLOP count over this machine's sgemm rate.

    .venv/bin/python bench/floor.py                                  # the two paper configs
    .venv/bin/python bench/floor.py --preset paper-cifar10-fixed
    .venv/bin/python bench/floor.py --preset quick-mnist --set synth.epochs=10 --measure

The count is taken with ``torch.utils.flop_counter.FlopCounterMode`` over one real
meta-gradient (``ddcli.core.nets.NetsMetaGradient``, as the engine calls it: the T inner
steps with their double backward and the outer loss on the real batch with its
gradient), on random tensors of the config's shapes. Only matmuls and convolutions are
counted (what FlopCounterMode knows); elementwise ops, pooling and the optimiser step
are left out, so the floor is a lower bound. The rate is a 2048^2 float32 matmul
(``bench/machine.py``), the best case for the same kernels; floor = FLOPs / rate.

``--measure`` also times that meta-gradient in this process (best of ``--repeats``),
which gives its ratio to the floor without the engine around it;
``bench/distill_speed.py`` times whole iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import cpu_info, gemm_gflops

from ddcli.config import build_config
from ddcli.core.inner import InnerLoop
from ddcli.core.nets import NetsMetaGradient
from ddcli.core.rates import initial_raw_lrs
from ddcli.data import dataset_info
from ddcli.models import create_model, init_weights

DEFAULT_PRESETS = ("paper-mnist-fixed", "paper-cifar10-fixed")


def _override(text: str) -> dict[str, Any]:
    key, _, value = text.partition("=")
    section, _, name = key.partition(".")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value  # a bare string, e.g. run.unroll_memory=recompute
    return {section: {name: parsed}}


def problem(preset: str, overrides: list[str]):
    """(config, meta-gradient, its arguments) for one iteration of ``preset`` on random data."""
    layer: dict[str, Any] = {"run": {"device": "cpu"}}
    for text in overrides:
        for section, values in _override(text).items():
            layer.setdefault(section, {}).update(values)
    cfg = build_config(preset=preset, overrides=layer)
    info = dataset_info(cfg.data.dataset)
    c, hw, classes = info.in_channels, info.image_size, info.num_classes
    model = create_model(cfg.model_name(info.name), in_channels=c, num_classes=classes,
                         image_size=hw, **cfg.model.kwargs)
    n = classes * cfg.synth.images_per_class
    inner = InnerLoop.from_config(cfg, n)
    # Every random mode unrolls sample_n_nets nets an iteration; fixed modes unroll one.
    nets = cfg.init.sample_n_nets if cfg.init.mode.endswith("random") else 1
    g = torch.Generator().manual_seed(0)
    inits = []
    for _ in range(nets):
        init_weights(model, cfg.model.init_scheme, generator=g)
        inits.append({k: v.detach().clone() for k, v in model.named_parameters()})
    learned = {"images": torch.randn(cfg.synth.steps, n, c, hw, hw, generator=g),
               "raw_lrs": initial_raw_lrs(cfg.synth.step_lr, cfg.total_steps)}
    labels = torch.arange(classes).repeat_interleave(cfg.synth.images_per_class)
    labels = labels.expand(cfg.synth.steps, n).contiguous()
    x = torch.randn(cfg.data.batch_size, c, hw, hw, generator=g)
    y = torch.randint(0, classes, (cfg.data.batch_size,), generator=g)
    run = NetsMetaGradient(inner.step_fn(model), mode=cfg.run.unroll_memory,
                           batch=cfg.run.batch_nets)

    def once():
        return run(inits, learned, x, y, labels=labels, schedule=inner.schedule(0, augment=True))

    return cfg, once


def count(once) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False) as counter:
        once()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def best_time(once, repeats: int) -> float:
    once()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help=f"default: {', '.join(DEFAULT_PRESETS)}")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. data.batch_size=256")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="thread counts for the sgemm rate (default 1 and all cores)")
    ap.add_argument("--measure", action="store_true", help="also time the meta-gradient")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    rates = {t: gemm_gflops(2048, t, torch.float32, 10) for t in threads}
    rows = []
    for preset in args.preset or DEFAULT_PRESETS:
        cfg, once = problem(preset, args.set)
        flops, by_op = count(once)
        row = {"preset": preset, "model": cfg.model_name(), "T": cfg.total_steps,
               "batch": cfg.data.batch_size, "gflop": flops / 1e9,
               "gflop_by_op": {k: v / 1e9 for k, v in by_op.items()},
               "floor_s": {t: flops / 1e9 / r for t, r in rates.items()}}
        if args.measure:
            row["measured_s"] = {}
            saved = torch.get_num_threads()
            for t in threads:
                torch.set_num_threads(t)
                row["measured_s"][t] = best_time(once, args.repeats)
            torch.set_num_threads(saved)
        rows.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.json:
        print(json.dumps({"sgemm_gflops": rates, "load_average": load, "configs": rows}))
        return
    print(f"{cpu_info()['cpu']}, torch {torch.__version__}; sgemm 2048^2 GFLOP/s: "
          + ", ".join(f"{t} thread(s) {r:.1f}" for t, r in rates.items())
          + f"; load average {load:.1f}\n")
    head = ["config", "T", "batch", "GFLOP / iter"] + [f"floor, {t} thr" for t in threads]
    if args.measure:
        head += [f"meta-gradient, {t} thr (x floor)" for t in threads]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [f"{r['preset']} ({r['model']})", r["T"], r["batch"], f"{r['gflop']:.2f}"]
        cells += [f"{r['floor_s'][t]:.4f} s" for t in threads]
        if args.measure:
            cells += [f"{r['measured_s'][t]:.3f} s ({r['measured_s'][t] / r['floor_s'][t]:.1f}x)"
                      for t in threads]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        ops = ", ".join(f"{k.removeprefix('aten.')} {v:.2f}" for k, v in r["gflop_by_op"].items())
        print(f"\n{r['preset']}: GFLOP by op: {ops}")


if __name__ == "__main__":
    main()
