"""Seconds per outer iteration and peak RSS: MNIST, LeNet, T = 30, real batch 1024.

    .venv/bin/python bench/distill_speed.py --data-root /work/shared/data

Fixed init (one net), and random init with one net per iteration (a fresh init is drawn
every iteration). Each configuration runs in a fresh process (see bench/_common.py).
The published reference takes 0.45-0.66 s per fixed-init iteration on 2 cores; the
target here is <= 0.25 s.
"""

from __future__ import annotations

from _common import base_parser, machine, measure, mib, mnist_config, table


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--mode", default="full", help="unroll memory mode")
    args = ap.parse_args()
    rows = []
    for label, init in (("fixed", {"mode": "fixed"}),
                        ("random", {"mode": "random", "n_nets": 1, "sample_n_nets": 1})):
        r = measure(mnist_config(args.data_root, mode=args.mode, init=init),
                    iterations=args.iterations, threads=args.threads)
        rows.append([label, args.mode, f"{r['s_per_iter']:.3f}", f"{r['cpu_s_per_iter']:.3f}",
                     mib(r["peak_rss"]), mib(r["peak_rss"] - r["start_rss"])
                     if r["peak_rss"] else "n/a"])
    print(f"MNIST LeNet, T = 30, batch 1024, {args.iterations} timed iterations; {machine(r['threads'])}\n")
    print(table(["init", "unroll memory", "s/iter", "CPU s/iter", "peak RSS", "+ over start"],
                rows))


if __name__ == "__main__":
    main()
