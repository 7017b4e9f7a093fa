"""Seconds per iteration and peak RSS at --sample-n-nets 1, 4, 8: batched vs looped.

    .venv/bin/python bench/batched_nets.py --data-root /work/shared/data

MNIST, LeNet, random init (a fresh set of nets every iteration), T = 30, real batch 1024,
full unroll memory. "batched" evaluates the nets together (torch.func.vmap over stacked
weights, `--batch-nets`, the default), "looped" one after another (`--no-batch-nets`).
Each configuration runs in a fresh process (bench/_common.py). Target: batched at
--sample-n-nets 8 takes <= 0.5x the time of the loop.
"""

from __future__ import annotations

from _common import base_parser, machine, measure, mib, mnist_config, table


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--nets", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--mode", default="full")
    args = ap.parse_args()
    rows, times = [], {}
    for n in args.nets:
        for batched in ([False] if n == 1 else [False, True]):
            init = {"mode": "random", "n_nets": n, "sample_n_nets": n}
            cfg = mnist_config(args.data_root, mode=args.mode, init=init, batch_nets=batched)
            r = measure(cfg, iterations=args.iterations, warmup=1, threads=args.threads)
            times[n, batched] = r
            rows.append([n, "batched" if batched else "looped", f"{r['s_per_iter']:.3f}",
                         f"{r['cpu_s_per_iter']:.3f}", mib(r["peak_rss"]),
                         mib(r["peak_rss"] - r["start_rss"]) if r["peak_rss"] else "n/a"])
    print(f"MNIST LeNet, random init, T = 30, batch 1024, {args.mode}; {machine(r['threads'])}\n")
    print(table(["nets", "path", "s/iter", "CPU s/iter", "peak RSS", "+ over start"], rows))
    for n in args.nets:
        if (n, True) in times:
            wall = times[n, True]["s_per_iter"] / times[n, False]["s_per_iter"]
            cpu = times[n, True]["cpu_s_per_iter"] / times[n, False]["cpu_s_per_iter"]
            print(f"\nbatched / looped at {n} nets: {wall:.2f}x wall, {cpu:.2f}x CPU"
                  + (" (target <= 0.5x)" if n == 8 else ""))


if __name__ == "__main__":
    main()
