"""Seconds per iteration and peak RSS of each --unroll-memory mode at T = 30, 100, 300.

    .venv/bin/python bench/memory_modes.py --data-root /work/shared/data

MNIST, LeNet, fixed init, real batch 1024, 10 steps x 3 / 10 / 30 epochs. Every
configuration runs in a fresh process (bench/_common.py), so each peak is its own; the
"+ over start" column is what distilling added to the process (torch and the data
excluded), and "estimate" is `dd distill --dry-run`'s figure for the same thing.
Targets: recompute at T = 300 peaks at <= 1.3x its own peak at T = 30, and costs
<= 1.6x the s/iter of full at the same T.
"""

from __future__ import annotations

from _common import base_parser, machine, measure, mib, mnist_config, table

from ddcli.core.memory import estimate_memory
from ddcli.config import DistillConfig
from ddcli.models import create_model

ITERATIONS = {30: 8, 100: 4, 300: 2}  # fewer at long unrolls: the peak doesn't need more


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--steps-total", type=int, nargs="*", default=[30, 100, 300],
                    help="T values (multiples of 10)")
    ap.add_argument("--modes", nargs="*", default=["full", "stepwise", "recompute"])
    args = ap.parse_args()
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    rows, results = [], {}
    for t in args.steps_total:
        for mode in args.modes:
            cfg = mnist_config(args.data_root, epochs=t // 10, mode=mode)
            r = measure(cfg, iterations=ITERATIONS.get(t, 2), warmup=1, threads=args.threads)
            est = estimate_memory(DistillConfig.from_dict(cfg), model=model, train_size=60000,
                                  test_size=10000)
            extra = est.modes[mode] - est.data  # the data are in "start" already
            results[t, mode] = r
            rows.append([t, mode, f"{r['s_per_iter']:.3f}", f"{r['cpu_s_per_iter']:.3f}",
                         mib(r["peak_rss"]), mib(r["peak_rss"] - r["start_rss"]), mib(extra)])
    print(f"MNIST LeNet, fixed init, batch 1024; {machine(r['threads'])}\n")
    print(table(["T", "mode", "s/iter", "CPU s/iter", "peak RSS", "+ over start", "estimate"],
                rows))
    if (300, "recompute") in results and (30, "recompute") in results:
        long, short = results[300, "recompute"], results[30, "recompute"]
        print(f"\nrecompute peak RSS, T = 300 / T = 30: {long['peak_rss'] / short['peak_rss']:.2f}x "
              "(target <= 1.3x)")
    for t in args.steps_total:
        if (t, "recompute") in results and (t, "full") in results:
            ratio = results[t, "recompute"]["s_per_iter"] / results[t, "full"]["s_per_iter"]
            cpu = results[t, "recompute"]["cpu_s_per_iter"] / results[t, "full"]["cpu_s_per_iter"]
            print(f"recompute / full s/iter at T = {t}: {ratio:.2f}x wall, {cpu:.2f}x CPU "
                  "(target <= 1.6x)")


if __name__ == "__main__":
    main()
