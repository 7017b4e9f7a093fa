"""Seconds per iteration in 1 process vs 2 (`dd distill --nproc 2`, torchrun, gloo).

    .venv/bin/python bench/distributed.py --data-root /work/shared/data

MNIST, LeNet, random init, --sample-n-nets 4 (2 per process with 2), T = 30, real batch
1024. Both runs go through the `dd distill` command; s/iter comes from rank 0's
metrics.jsonl (elapsed per iteration), after the first iteration. One process uses all
the cores' threads (or --threads); with N processes each gets 1/N of them
(OMP_NUM_THREADS, as `--nproc` sets it), so both use the same cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import base_parser, machine, table


def run(data_root: str | None, nproc: int, nets: int, iterations: int, batched: bool,
        threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ddcli", "distill", "mnist", "--init-mode", "random",
               "--n-nets", str(nets), "--sample-n-nets", str(nets), "--iterations",
               str(iterations), "--log-every", "1", "--checkpoint-every", "0", "--device", "cpu",
               "--quiet", "-o", str(Path(tmp) / "b.safetensors"),
               "--batch-nets" if batched else "--no-batch-nets"]
        if data_root:
            cmd += ["--data-root", data_root]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        lines = (Path(tmp) / "b.run" / "metrics.jsonl").read_text().splitlines()
        elapsed = {r["iteration"]: r["elapsed"] for r in map(json.loads, lines) if "loss" in r}
    return (elapsed[iterations] - elapsed[1]) / (iterations - 1)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--nets", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--no-batch-nets", dest="batched", action="store_false")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows, times = [], {}
    for nproc in (1, 2):
        threads = max(1, (args.threads or cores) // nproc)
        times[nproc] = run(args.data_root, nproc, args.nets, args.iterations, args.batched,
                           threads)
        rows.append([nproc, threads, args.nets // nproc, f"{times[nproc]:.3f}"])
    print(f"MNIST LeNet, random init, {args.nets} nets, T = 30, batch 1024, "
          f"{'batched' if args.batched else 'looped'} nets; {machine()}\n")
    print(table(["processes", "threads each", "nets each", "s/iter"], rows))
    print(f"\n2 processes / 1 process: {times[2] / times[1]:.2f}x")


if __name__ == "__main__":
    main()
