"""A DM iteration with its images channels-last (NHWC) or not, alternated in one process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dm_nhwc.py                 # dm-cifar10-ipc10
    OMP_NUM_THREADS=1 .venv/bin/python bench/dm_nhwc.py --preset dm-mnist-ipc10 --pairs 3

One meta-gradient of iteration 0, as the engine runs it (``bench/floor.py``'s
``problem``: random images of the dataset's shape, the engine's allocator setting), timed
NCHW then NHWC ``--pairs`` times; prints each time, the median ratio, and how far the
two layouts' gradients differ (float rounding: DSA's sampling in float32 and ReLUs near
zero make it larger than one kernel's). The layout is the engine's CPU policy
(``ddcli.infra.device.real_batch_nhwc``; ``DDCLI_REAL_NHWC=0`` turns it off in a run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from floor import problem
from machine import cpu_info

from ddcli.infra.device import retain_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="dm-cifar10-ipc10")
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    # The same problem twice, the layout set as a run sets it (DDCLI_REAL_NHWC).
    runs = {}
    for nhwc in (False, True):
        os.environ["DDCLI_REAL_NHWC"] = str(int(nhwc))
        runs[nhwc] = problem(args.preset, [])[1]
    times: dict[bool, list[float]] = {False: [], True: []}
    grads = {}
    with retain_freed_memory(torch.device("cpu")):
        for once in runs.values():
            once()  # warm: the allocator's blocks and oneDNN's primitives
        for _ in range(args.pairs):
            for nhwc, once in runs.items():
                start = time.perf_counter()
                grads[nhwc] = once().grads["images"]
                times[nhwc].append(time.perf_counter() - start)
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    diff = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
    print(f"{cpu_info()['cpu']}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{args.preset}: NCHW {', '.join(f'{t:.2f}' for t in times[False])} s; NHWC "
          f"{', '.join(f'{t:.2f}' for t in times[True])} s; median ratio {ratio:.2f}x; "
          f"gradients differ by {diff:.2g} of their largest entry")


if __name__ == "__main__":
    main()
