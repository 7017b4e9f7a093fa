"""Time one `dd eval` row under two code trees, alternated in one sitting: a ratio, not a time.

Each variant is a source tree (a `git worktree` of the baseline commit, or this one) and
extra `dd eval` flags. The variants run in turn, as subprocesses on the same set, so
both see the same machine; wall and CPU seconds (user + system of the child) are
recorded, and each variant's accuracies are printed beside them so a faster row that
scores differently is seen at once.

    git worktree add ../wt-base <baseline commit>
    OMP_NUM_THREADS=1 python bench/row_speed.py SET --data-root DIR \\
        --variant "base=../wt-base:" --variant "bf16+compile=.:--precision bf16 --compile" \\
        --flags "--protocol dsa --n-nets 2 --baseline random-real --train-epochs 200"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(tree: Path, flags: list[str], common: list[str], bundle: str, data_root: str | None):
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    cmd = [sys.executable, "-m", "ddcli", "eval", bundle, "--json", *common, *flags]
    if data_root:
        cmd += ["--data-root", data_root]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(map(shlex.quote, cmd))} failed:\n{out.stderr[-2000:]}")
    rec = json.loads(out.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = {r["label"] if "label" in r else f"{r['name']} · {r['group']}": r["accuracies"]
            for r in rec["rows"]}
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=TREE:FLAGS")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data-root", default=os.environ.get("DDCLI_DATA_ROOT"))
    ap.add_argument("--flags", default="", help="dd eval flags for every variant (one string)")
    args = ap.parse_args()
    common = shlex.split(args.flags)
    variants = []
    for v in args.variant:
        name, _, rest = v.partition("=")
        tree, _, flags = rest.partition(":")
        variants.append((name, Path(tree), shlex.split(flags)))
    results: dict[str, list] = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, tree, flags in variants:
            r = run(tree, flags, common, str(Path(args.bundle).resolve()), args.data_root)
            results[name].append(r)
            print(f"{name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU; "
                  + "; ".join(f"{k} {[round(100 * a, 2) for a in v]}" for k, v in r["rows"].items()),
                  flush=True)
    base = variants[0][0]
    best = {n: (min(r["wall_s"] for r in rs), min(r["cpu_s"] for r in rs))
            for n, rs in results.items()}
    load = os.getloadavg()[0]
    print(f"\nthreads {os.environ.get('OMP_NUM_THREADS', 'all')}, load average {load:.1f} "
          f"after the runs; common flags: {' '.join(common)}")
    print("| variant | wall s (best) | CPU s (best) | speed-up vs " + base + ", wall | CPU |")
    print("|---|---|---|---|---|")
    for n, (w, c) in best.items():
        print(f"| {n} | {w:.1f} | {c:.1f} | {best[base][0] / w:.2f}x | {best[base][1] / c:.2f}x |")


if __name__ == "__main__":
    main()
