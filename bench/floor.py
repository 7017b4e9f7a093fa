"""The FLOP floor of one outer iteration: its FLOP count over this machine's sgemm rate.

    .venv/bin/python bench/floor.py                                  # the two paper configs
    .venv/bin/python bench/floor.py --preset paper-cifar10-fixed
    .venv/bin/python bench/floor.py --preset quick-mnist --set synth.epochs=10 --measure

The count is taken with ``torch.utils.flop_counter.FlopCounterMode`` over one real
meta-gradient, called as the engine calls it (its ``Runtime``, built on random images of
the dataset's shape: the T inner steps with their double backward and the outer loss
on the real batch with its gradient). Only matmuls and convolutions are
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
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import cpu_info, gemm_gflops

from ddcli.config import build_config
from ddcli.data import RealData, dataset_info
from ddcli.engine.runtime import Runtime
from ddcli.infra.device import retain_freed_memory

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
    """(config, one meta-gradient of iteration 0) for ``preset``, as the engine runs it.

    The engine's own ``Runtime`` is built on random images of the dataset's shape (a
    training set of two batches), so the meta-gradient has the kernels, threads, chunks
    and precision a real run picks; only its numbers are random.
    """
    layer: dict[str, Any] = {"run": {"device": "cpu"}}
    for text in overrides:
        for section, values in _override(text).items():
            layer.setdefault(section, {}).update(values)
    cfg = build_config(preset=preset, overrides=layer)
    info = dataset_info(cfg.data.dataset)
    c, hw, classes = info.in_channels, info.image_size, info.num_classes
    g = torch.Generator().manual_seed(0)
    n = 2 * cfg.data.batch_size
    data = RealData(name=info.name, train_x=torch.randn(n, c, hw, hw, generator=g),
                    train_y=torch.arange(n) % classes,
                    test_x=torch.randn(classes, c, hw, hw, generator=g),
                    test_y=torch.arange(classes), classes=[str(k) for k in range(classes)],
                    mean=info.mean, std=info.std)
    rt = Runtime(cfg, data)
    learned, _, _ = rt.restore(rt.fresh_state(Path("floor.safetensors")))
    inits = rt.init_source(rt.fresh_state(Path("floor.safetensors"))).sample(0)
    x, y = rt.real_batch(0, torch.Generator().manual_seed(0))
    schedule, window = rt.inner_plan(0)

    def once():
        return rt.nets(inits, learned, x, y, labels=rt.labels, schedule=schedule, window=window)

    return cfg, once


def count(once) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False) as counter:
        once()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def best_time(once, repeats: int) -> float:
    # With the engine's allocator setting, or page faults on fresh blocks are timed too.
    with retain_freed_memory(torch.device("cpu")):
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
