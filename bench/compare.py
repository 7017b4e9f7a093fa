"""Same-sitting A/B: ``bench/distill_speed.py`` of several checkouts, alternated.

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/compare.py /tmp/base . --rounds 3 --threads 1 2 \\
        -- --data-root /work/shared/data

Each round runs every checkout's own ``bench/distill_speed.py`` once per thread count,
in turn (A B A B ...), with ``PYTHONPATH`` pointing at that checkout, so each measures
its own code in fresh processes. On a machine that other jobs share, a single run can be
several times off; alternating spreads the disturbance over all checkouts, and the
minimum over rounds is the figure least affected by it (the median is printed too).
Ratios are against the first checkout. Arguments after ``--`` go to distill_speed.py;
``--bench bench`` runs this checkout's script (and worker) against each checkout's
``ddcli``, for options an older script lacks, such as ``--preset``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROW = re.compile(r"^\| ([\w-]+) \| \w+ \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) MiB")


def run_once(checkout: Path, threads: int, extra: list[str],
             bench: Path | None = None) -> dict[str, tuple[float, float, int]]:
    """{init: (s/iter, CPU s/iter, peak RSS MiB)} from one distill_speed.py run."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    script = (bench or checkout / "bench") / "distill_speed.py"
    proc = subprocess.run([sys.executable, str(script),
                           "--threads", str(threads), *extra],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: distill_speed.py failed:\n{proc.stderr[-2000:]}")
    rows = {}
    for line in proc.stdout.splitlines():
        m = ROW.match(line)
        if m:
            rows[m[1]] = (float(m[2]), float(m[3]), int(m[4].replace(",", "")))
    return rows


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--bench", type=Path, default=None,
                    help="run this bench/ folder's distill_speed.py against every checkout "
                         "(e.g. for its --preset), instead of each checkout's own")
    args = ap.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkouts]
    bench = args.bench.resolve() if args.bench else None
    runs: dict[tuple, list[tuple[float, float, int]]] = defaultdict(list)
    loads = []
    for r in range(args.rounds):
        for threads in args.threads:
            for c in checkouts:
                loads.append(os.getloadavg()[0])
                got = run_once(c, threads, extra, bench)
                for init, figures in got.items():
                    runs[(c, threads, init)].append(figures)
                print(f"round {r + 1}, {threads} thread(s), {c.name}: {got}", file=sys.stderr,
                      flush=True)
    print(f"{args.rounds} alternating rounds; load average {min(loads):.1f}-{max(loads):.1f} "
          "at the starts of the runs\n")
    print("| checkout | threads | init | s/iter min | median | CPU s/iter min | "
          "peak RSS | ratio (min s/iter) | ratio (min CPU) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        inits = sorted({k[2] for k in runs if k[1] == threads})
        for init in inits:
            base = runs[(checkouts[0], threads, init)]
            for c in checkouts:
                got = runs[(c, threads, init)]
                wall, cpu = min(g[0] for g in got), min(g[1] for g in got)
                print(f"| {c.name} | {threads} | {init} | {wall:.3f} | "
                      f"{statistics.median(g[0] for g in got):.3f} | {cpu:.3f} | "
                      f"{max(g[2] for g in got):,} MiB | "
                      f"{wall / min(g[0] for g in base):.2f} | {cpu / min(g[1] for g in base):.2f} |")


if __name__ == "__main__":
    main()
