"""Where one outer iteration's time goes: torch.profiler over the engine's meta-gradient.

    .venv/bin/python bench/profile_iteration.py --preset paper-mnist-fixed --threads 1

The meta-gradient is built as ``bench/floor.py`` builds it (the engine's ``Runtime`` on
random images of the dataset's shape), run once to warm up, then ``--repeats`` times
under ``torch.profiler``. Prints the ops with the most self CPU time per iteration, and
what share of the iteration they take: what is left to gain, op by op.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from floor import problem

from ddcli.infra.device import retain_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-mnist-fixed")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, once = problem(args.preset, args.set)
    with retain_freed_memory(torch.device("cpu")):
        once()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                once()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.preset}, {args.threads} thread(s): {total / args.repeats / 1e3:.1f} ms of "
          f"aten self time per iteration\n")
    print("| op | calls / iter | ms / iter | share |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        ms = e.self_cpu_time_total / args.repeats / 1e3
        print(f"| {e.key.removeprefix('aten::')} | {e.count // args.repeats} | {ms:.1f} | "
              f"{e.self_cpu_time_total / total:.0%} |")


if __name__ == "__main__":
    main()
