"""The FLOP floor of one outer iteration: its FLOP count over this machine's sgemm rate.

    .venv/bin/python bench/floor.py                                  # the two paper configs
    .venv/bin/python bench/floor.py --preset paper-cifar10-fixed --no-measure
    .venv/bin/python bench/floor.py --preset quick-mnist --set synth.epochs=10
    .venv/bin/python bench/floor.py --preset ratbptt-mnist-ipc10 --width 32 128 --threads 1
    .venv/bin/python bench/floor.py --preset dm-cifar10-ipc10 --threads 1        # a DM iteration
    .venv/bin/python bench/floor.py --preset mtt-mnist-ipc10 --set init.pool='"POOL"'  # MTT
    .venv/bin/python bench/floor.py --train-protocol --width 128 --epochs 300 --threads 1
    .venv/bin/python bench/floor.py --train-protocol --augment dsa --precision bf16 --compile

The count is taken with ``torch.utils.flop_counter.FlopCounterMode`` over one real
meta-gradient, called as the engine calls it (its ``Runtime``, built on random images of
the dataset's shape, and the run's objective: for the unrolled family the T inner steps
with their double backward and the outer loss on the real batch with its gradient; for
DM the class-wise real and synthetic embeddings and the images' gradient; for MTT the
N steps from an expert of the ``init.pool`` and the distance to its target). Only matmuls and convolutions are
counted (what FlopCounterMode knows); elementwise ops, pooling and the optimiser step
are left out, so the floor is a lower bound. The rate is a 2048^2 float32 matmul
(``bench/machine.py``), the best case for the same kernels; floor = FLOPs / rate.

Each row is also timed in this process (best of ``--repeats``; ``--no-measure`` skips
it), which gives its ratio to the floor without the engine around it;
``bench/distill_speed.py`` times whole iterations. ``--width`` gives one row per ConvNet
width (``model.kwargs``), e.g. the RaT-BPTT-style iteration at 32 and 128.

``--train-protocol`` counts `dd eval --protocol train` instead, for one net (a row of
``n`` nets costs ``n`` times as much): SGD on ``--ipc`` random images per class for
``--epochs`` epochs, then one pass over ``--n-test`` test images. One epoch is counted
and multiplied by the epochs (every epoch runs the same batches), the test pass is
counted on a slice and scaled; DSA's ops (``--augment dsa``) are not matmuls, so they
add time but no FLOPs. Its timing is one whole training, once.
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

from ddcli.layering import build_config
from ddcli.core.augment import parse_augment
from ddcli.core.metrics import correct_counts
from ddcli.core.params import init_params, stack_params
from ddcli.data import RealData, dataset_info
from ddcli.core.objectives import CLASS_BATCHES, make_objective
from ddcli.engine.runtime import Runtime
from ddcli.evaluate import train_accuracies, train_nets
from ddcli.infra.device import retain_freed_memory
from ddcli.models import create_model

DEFAULT_PRESETS = ("paper-mnist-fixed", "paper-cifar10-fixed")


def _override(text: str) -> dict[str, Any]:
    key, _, value = text.partition("=")
    section, _, name = key.partition(".")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value  # a bare string, e.g. run.unroll_memory=recompute
    return {section: {name: parsed}}


def config(preset: str, overrides: list[str], device: str = "cpu"):
    """``preset`` with ``SECTION.KEY=VALUE`` overrides, run on ``device``."""
    layer: dict[str, Any] = {"run": {"device": device}}
    for text in overrides:
        for section, values in _override(text).items():
            layer.setdefault(section, {}).update(values)
    return build_config(preset=preset, overrides=layer)


def problem(preset: str, overrides: list[str], device: str = "cpu"):
    """(config, one meta-gradient of iteration 0) for ``preset``, as the engine runs it.

    The engine's own ``Runtime`` is built on random images of the dataset's shape (a
    training set of two batches), so the meta-gradient has the kernels, threads, chunks
    and precision a real run picks; only its numbers are random.
    """
    cfg = config(preset, overrides, device)
    info = dataset_info(cfg.data.dataset)
    c, hw, classes = info.in_channels, info.image_size, info.num_classes
    g = torch.Generator().manual_seed(0)
    per_class = make_objective(cfg, classes).needs == CLASS_BATCHES  # DM: a batch per class
    n = 2 * cfg.data.batch_size * (classes if per_class else 1)
    data = RealData(name=info.name, train_x=torch.randn(n, c, hw, hw, generator=g),
                    train_y=torch.arange(n) % classes,
                    test_x=torch.randn(classes, c, hw, hw, generator=g),
                    test_y=torch.arange(classes), classes=[str(k) for k in range(classes)],
                    mean=info.mean, std=info.std)
    rt = Runtime(cfg, data)
    state = rt.fresh_state(Path("floor.safetensors"))
    rt.restore(state)
    learned = state.learned
    # What the engine's outer step hands the objective (``engine/loop.py``): the real data
    # it needs, the starts (and an expert's targets), the inner plan.
    inits, targets = rt.init_source(state).segments(0)
    batch = rt.outer_batch(0, torch.Generator().manual_seed(0))
    batch.targets = targets
    schedule, window = rt.inner_plan(0)

    def once():
        return rt.objective.meta_gradient(rt.nets, inits, learned, batch, labels=rt.labels,
                                          schedule=schedule, window=window)

    return cfg, once


def count(once) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False) as counter:
        once()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


def best_times(runs, repeats: int, device: str = "cpu") -> list[float]:
    """The best of ``repeats`` timings of each of ``runs``, timed in turn (A B A B ...)
    after one warm-up call each (which compiles a compiled one)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    # With the engine's allocator setting, or page faults on fresh blocks are timed too.
    with retain_freed_memory(torch.device(device)):
        for run in runs:
            run()
        best = [float("inf")] * len(runs)
        for _ in range(repeats):
            for i, run in enumerate(runs):
                sync()
                t = time.perf_counter()
                run()
                sync()
                best[i] = min(best[i], time.perf_counter() - t)
    return best


def best_time(once, repeats: int, device: str = "cpu") -> float:
    return best_times([once], repeats, device)[0]


def train_protocol(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   test_x: torch.Tensor, test_y: torch.Tensor, *, epochs: int,
                   augment: str = "none", lr: float = 0.01, batch_size: int = 256,
                   measure: bool = True, precision: str = "fp32",
                   compiled: bool = False) -> dict[str, Any]:
    """FLOPs (and, if ``measure``, seconds) of the train protocol for one fresh net.

    ``x, y`` are the set, ``test_x, test_y`` the test split, all on the device the net
    trains on; ``model`` gives the structure (its own weights are not used). The FLOPs
    are counted in fp32 and without compiling; ``precision`` and ``compiled`` change
    only how the measured run computes (as ``dd eval --precision``, ``--compile``). A
    compiled run is warmed up first (one epoch, not timed; its seconds are
    ``compile_s``), as a row compiles once for all its nets.
    """
    init = {k: v.to(x.device) for k, v in init_params(model, "default", 0).items()}
    train = dict(lr=lr, seeds=[0], batch_size=batch_size, augment=parse_augment(augment))
    with FlopCounterMode(display=False) as counter:
        list(train_nets(model, [init], x, y, epochs=1, batched=False, **train))
    per_epoch = counter.get_total_flops()
    part = test_x[:256]  # the forward pass is linear in the batch: count a slice, scale
    with FlopCounterMode(display=False) as counter:
        # An explicit chunk: no one-image probe of the activation size is counted.
        correct_counts(model, stack_params([init], x.device), part, test_y[:256],
                       vmapped=False, chunk=part.shape[0])
    test = counter.get_total_flops() * test_x.shape[0] / max(1, part.shape[0])
    out = {"gflop": (epochs * per_epoch + test) / 1e9, "gflop_per_epoch": per_epoch / 1e9,
           "gflop_test": test / 1e9}
    if measure:
        from ddcli.evaluate._evaluate import precision_context

        train["compiled"] = compiled
        with precision_context(precision, x.device):
            if compiled:
                t = time.perf_counter()
                list(train_nets(model, [init], x, y, epochs=1, batched=False, **train))
                out["compile_s"] = time.perf_counter() - t
            out["measured_s"] = best_time(lambda: train_accuracies(
                model, [init], x, y, test_x, test_y, batched=False, epochs=epochs, **train),
                repeats=1, device=str(x.device))
    return out


def train_problem(dataset: str, model_name: str, width: int | None, ipc: int,
                  n_test: int, device: str = "cpu"):
    """(model, x, y, test_x, test_y): random images of ``dataset``'s shape, ``ipc`` per class."""
    info = dataset_info(dataset)
    c, hw, classes = info.in_channels, info.image_size, info.num_classes
    kwargs = {"width": width} if width else {}
    # The structure stays on the CPU, as in `dd eval`: weights move to the device.
    model = create_model(model_name, in_channels=c, num_classes=classes, image_size=hw,
                         **kwargs)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ipc * classes, c, hw, hw, generator=g)  # (ipc * classes, C, H, W)
    test_x = torch.randn(n_test, c, hw, hw, generator=g)
    y, test_y = torch.arange(x.shape[0]) % classes, torch.arange(n_test) % classes
    return model, *(t.to(device) for t in (x, y, test_x, test_y))


def _preset_rows(args, threads: list[int], rates: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for preset in args.preset or DEFAULT_PRESETS:
        for width in args.width or [None]:
            sets = args.set + ([f'model.kwargs={{"width": {width}}}'] if width else [])
            cfg, once = problem(preset, sets)
            flops, by_op = count(once)  # counted eagerly: FLOPs don't depend on compiling
            # --compile: the eager and the compiled iteration (as `dd distill --compile`),
            # timed in turn, so that a change in the machine's load hits both
            variants = [("", once)]
            if args.compile:
                variants.append((", compiled", problem(preset, sets + ["run.compile=true"])[1]))
            for how, _ in variants:
                rows.append({"name": f"{preset} ({cfg.model_name()}"
                                     f"{f', width {width}' if width else ''}{how})",
                             "T": cfg.total_steps, "batch": cfg.data.batch_size,
                             "gflop": flops / 1e9,
                             "gflop_by_op": {k: v / 1e9 for k, v in by_op.items()}})
            runs = [run for _, run in variants]
            _time(rows[-len(runs):], threads, rates,
                  lambda runs=runs: best_times(runs, args.repeats), args.measure)
    return rows


def _train_rows(args, threads: list[int], rates: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for width in args.width or [128]:
        model, x, y, test_x, test_y = train_problem(args.dataset, args.model, width, args.ipc,
                                                    args.n_test)
        size = dict(epochs=args.epochs, augment=args.augment)
        row = train_protocol(model, x, y, test_x, test_y, measure=False, **size)
        how = [args.precision] + ["compiled"] * args.compile
        row.update(name=f"train protocol: {args.dataset} {args.model}"
                   f"{f' width {width}' if width else ''}, {args.ipc}/class, {args.epochs} "
                   f"epochs, augment {args.augment}, {args.n_test} test images, "
                   f"{' '.join(how)}",
                   T=args.epochs, batch=min(x.shape[0], 256))
        _time([row], threads, rates, lambda: [train_protocol(
            model, x, y, test_x, test_y, precision=args.precision, compiled=args.compile,
            **size)["measured_s"]], args.measure)
        rows.append(row)
    return rows


def _time(rows: list[dict[str, Any]], threads: list[int], rates: dict[int, float], timer,
          measure: bool) -> None:
    """Each row's floor at each thread count; with ``measure``, its measured time:
    ``timer()`` returns one time per row, for all of them at once (timed in turn)."""
    for row in rows:
        row["floor_s"] = {t: row["gflop"] / r for t, r in rates.items()}
    if not measure:
        return
    saved = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        for row, seconds in zip(rows, timer()):
            row.setdefault("measured_s", {})[t] = seconds
    torch.set_num_threads(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help=f"default: {', '.join(DEFAULT_PRESETS)}")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value, e.g. data.batch_size=256")
    ap.add_argument("--width", type=int, nargs="*", default=None,
                    help="one row per ConvNet width (train protocol: default 128)")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="thread counts for the sgemm rate (default 1 and all cores)")
    ap.add_argument("--measure", action=argparse.BooleanOptionalAction, default=True,
                    help="also time each row (default on)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    train = ap.add_argument_group("the train protocol (`dd eval --protocol train`)")
    train.add_argument("--train-protocol", action="store_true",
                       help="count one net's training and test pass instead of an iteration")
    train.add_argument("--dataset", default="mnist")
    train.add_argument("--model", default="convnet")
    train.add_argument("--ipc", type=int, default=10, help="images per class")
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--augment", default="none", help="none or dsa (as `dd eval --augment`)")
    train.add_argument("--n-test", type=int, default=10_000, help="test images")
    train.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="as `dd eval --precision` (the floor stays fp32's)")
    train.add_argument("--compile", action="store_true",
                       help="as `dd eval --compile` (compiled before the timed run); with "
                       "--preset, as `dd distill --compile`")
    args = ap.parse_args()
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    rates = {t: gemm_gflops(2048, t, torch.float32, 10) for t in threads}
    rows = (_train_rows if args.train_protocol else _preset_rows)(args, threads, rates)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.json:
        print(json.dumps({"sgemm_gflops": rates, "load_average": load, "configs": rows}))
        return
    print(f"{cpu_info()['cpu']}, torch {torch.__version__}; sgemm 2048^2 GFLOP/s: "
          + ", ".join(f"{t} thread(s) {r:.1f}" for t, r in rates.items())
          + f"; load average {load:.1f}\n")
    steps = "epochs" if args.train_protocol else "T"
    head = ["config", steps, "batch", "GFLOP"] + [f"floor, {t} thr" for t in threads]
    if args.measure:
        head += [f"measured, {t} thr (x floor)" for t in threads]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["name"], r["T"], r["batch"], f"{r['gflop']:.2f}"]
        cells += [f"{r['floor_s'][t]:.4f} s" for t in threads]
        if args.measure:
            cells += [f"{r['measured_s'][t]:.3f} s ({r['measured_s'][t] / r['floor_s'][t]:.1f}x)"
                      for t in threads]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for r in rows:
        if "gflop_by_op" in r:
            ops = ", ".join(f"{k.removeprefix('aten.')} {v:.2f}"
                            for k, v in r["gflop_by_op"].items())
            print(f"\n{r['name']}: GFLOP by op: {ops}")
        else:
            print(f"\n{r['name']}: GFLOP per epoch {r['gflop_per_epoch']:.4f}, "
                  f"test pass {r['gflop_test']:.3f}")


if __name__ == "__main__":
    main()
