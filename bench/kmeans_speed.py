"""Seconds to build the k-means baseline sets that `dd eval --compare` builds for a bundle.

    OMP_NUM_THREADS=1 .venv/bin/python bench/kmeans_speed.py \
        results/paper-mnist-random.safetensors --data-root DIR

`dd eval` builds one k-means set per net (``--n-nets``, default 20) with the seeds used
here, each one k-means per class (k = steps x images per class per step), all the sets'
clusterings of a class in lockstep (``--one-at-a-time``: one set after another, as
before; the sets are the same). Only the construction is timed, not the nets trained on
the sets. Wall and CPU time are both
reported: on a shared machine the wall time includes waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from ddcli.bundle import Bundle
from ddcli.data import load_dataset
from ddcli.engine.inits import derive_seed
from ddcli.evaluate import build_baseline, kmeans_sets


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--draws", type=int, default=20, help="sets to build (dd eval's --n-nets)")
    parser.add_argument("--seed", type=int, default=0, help="dd eval's --seed")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="build the sets one after another (the previous way)")
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    data = load_dataset(bundle.dataset, root=args.data_root)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    seeds = [derive_seed(args.seed, "baseline", i) for i in range(args.draws)]  # as dd eval
    if args.one_at_a_time:
        for seed in seeds:
            build_baseline("kmeans", bundle.labels, data, seed=seed)
    else:
        kmeans_sets(bundle.labels, data, seeds)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(json.dumps({
        "bundle": args.bundle, "draws": args.draws,
        "mode": "one at a time" if args.one_at_a_time else "lockstep", "layout": list(bundle.labels.shape),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "wall_s_per_draw": round(wall / args.draws, 3),
        "threads": torch.get_num_threads(), "cpu": _cpu_model(), "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
