"""Seconds per outer iteration and peak RSS: MNIST, LeNet, T = 30, real batch 1024.

    .venv/bin/python bench/distill_speed.py --data-root /work/shared/data
    .venv/bin/python bench/distill_speed.py --data-root /work/shared/data \\
        --preset paper-cifar10-fixed --iterations 6

Fixed init (one net), and random init with one net per iteration (a fresh init is drawn
every iteration). With ``--preset`` the preset's own configuration instead (on the CPU,
without checkpoints, logging or evaluation). Each configuration runs in a fresh process
(see bench/_common.py). ``bench/floor.py`` gives the FLOP floor of the same iteration;
``bench/compare.py`` alternates this script over several checkouts.
"""

from __future__ import annotations

from _common import base_parser, machine, measure, mib, mnist_config, table


def configs(args) -> list[tuple[str, dict]]:
    if args.preset:
        from ddcli.layering import build_config

        quiet = {"device": "cpu", "checkpoint_every": 0, "log_every": 0, "eval_every": 0,
                 "unroll_memory": args.mode}
        cfg = build_config(preset=args.preset, overrides={
            "data": {"data_root": args.data_root}, "run": quiet}).to_dict()
        return [(args.preset, cfg)]  # the worker sets optim.iterations
    return [(label, mnist_config(args.data_root, mode=args.mode, init=init))
            for label, init in (("fixed", {"mode": "fixed"}),
                                ("random", {"mode": "random", "n_nets": 1, "sample_n_nets": 1}))]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mode", default="full", help="unroll memory mode")
    ap.add_argument("--preset", default=None, help="measure this preset instead")
    ap.add_argument("--precision", default=None, help="run.precision (default: the config's)")
    args = ap.parse_args()
    rows = []
    for label, config in configs(args):
        if args.precision:
            config["run"]["precision"] = args.precision
        r = measure(config, iterations=args.iterations, warmup=args.warmup,
                    threads=args.threads)
        rows.append([label, args.mode, f"{r['s_per_iter']:.3f}", f"{r['cpu_s_per_iter']:.3f}",
                     mib(r["peak_rss"]), mib(r["peak_rss"] - r["start_rss"])
                     if r["peak_rss"] else "n/a"])
    what = args.preset or "MNIST LeNet, T = 30, batch 1024"
    print(f"{what}, {args.iterations} timed iterations; {machine(r['threads'])}\n")
    print(table(["init", "unroll memory", "s/iter", "CPU s/iter", "peak RSS", "+ over start"],
                rows))


if __name__ == "__main__":
    main()
