"""A DM iteration under `--compile` and `--precision bf16-outer`, alternated in one process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dm_levers.py                 # dm-mnist-ipc10
    OMP_NUM_THREADS=1 .venv/bin/python bench/dm_levers.py --preset dm-cifar10-ipc10

One meta-gradient of iteration 0, as the engine runs it (``bench/floor.py``'s ``problem``:
random images of the dataset's shape), for each variant: the default (fp32, eager),
``run.compile`` (the real side's mean embedding through ``torch.compile``) and both
levers (the real side compiled and under bfloat16 autocast). Each variant is warmed
(compiled) first, then the variants are timed in turn ``--rounds`` times. Printed: each
time, the best, its ratio to the default, and how far each variant's image gradient is
from the default's (relative norm of the difference, and the cosine).
"""

from __future__ import annotations

import argparse
import time

import torch

from floor import problem
from machine import cpu_info

from ddcli.infra.device import retain_freed_memory

VARIANTS = {"fp32, eager (default)": [], "--compile": ["run.compile=true"],
            "--compile --precision bf16-outer": ["run.compile=true",
                                                 "run.precision=bf16-outer"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dm-mnist-ipc10")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs = {name: problem(args.preset, sets)[1] for name, sets in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    grads = {}
    with retain_freed_memory(torch.device("cpu")):
        for once in runs.values():
            once()  # warm: compiling, the allocator's blocks and oneDNN's primitives
        for _ in range(args.rounds):
            for name, once in runs.items():
                start = time.perf_counter()
                grads[name] = once().grads["images"]
                times[name].append(time.perf_counter() - start)
    base = next(iter(runs))
    print(f"{cpu_info()['cpu']}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{args.preset}, one meta-gradient, {args.rounds} rounds in turn\n")
    print("| variant | seconds | best | × the default | gradient: rel. diff | cosine |")
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        g, g0 = grads[name].flatten().double(), grads[base].flatten().double()
        rel = float((g - g0).norm() / g0.norm())
        cos = float(torch.nn.functional.cosine_similarity(g, g0, dim=0))
        print(f"| {name} | {', '.join(f'{t:.2f}' for t in ts)} | {min(ts):.2f} | "
              f"{min(times[base]) / min(ts):.2f} | {rel:.2g} | {cos:.6f} |")


if __name__ == "__main__":
    main()
