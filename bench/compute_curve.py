"""Accuracy for the compute: a calibrated protocol's accuracy against the CPU-hours spent.

Each method's points come from one distillation: the periodic snapshots of a run folder
(``--run NAME=RUN_DIR``, written with ``--snapshot-every``) or a chain of bundles of one
run resumed to larger budgets (``--bundles NAME=A.safetensors,B.safetensors,...``).
Every point's set trains ``--n-nets`` fresh nets under ``--protocol`` through
``dd eval``'s own code, test set, final epoch, no selection. A snapshot is evaluated as
``dd eval RUN/snapshots/iter_K.pt`` does: the bundle the run would have written at K
(``run_bundle``), learned rates and soft labels included, so ``--protocol mtt`` (the
set's learned rate) works on snapshots too.

CPU-hours:

- a run folder: ``cpu_s`` of the metrics line at the snapshot's iteration (process CPU
  time, every thread, over every resume). Iterations from before ddcli recorded it are
  priced at the median CPU seconds per iteration of the lines that have it, and the
  point says "estimated". ``--extra NAME=HOURS`` adds up-front work the run needed
  (MTT's expert trajectories).
- a bundle chain: each segment's wall time (``summary.elapsed_s`` differences) times the
  threads its provenance records: an upper bound, as a thread is not always busy.

Points are appended to ``--out`` (one JSON line each) and skipped when already there, so
a stopped run resumes; ``--table`` prints the markdown table and ``--chart PNG`` draws the
chart with ddcli's own chart code (``ddcli.viz.line_chart``).

Selection. ``--validation N`` scores every point on N held-out training images instead of
the test set (``dd eval --validation N``: the images ``dd distill --validation N`` holds
out; the baselines and nothing else draw from the rest), and ``--select`` prints, per
method, the point with the best validation mean and the commands that bundle it and
measure it once on the test set. Choosing among snapshots by their test accuracy would
report the maximum of noisy test figures; this never looks at the test set to choose.

Example::

    OMP_NUM_THREADS=1 python bench/compute_curve.py --protocol dc --n-nets 3 \\
        --run DM=runs/dm-mnist-ipc10 --run MTT=runs/mtt-mnist-ipc10 --extra MTT=0.5 \\
        --bundles "RaT-BPTT-style=results/ratbptt-mnist-ipc10.safetensors,..." \\
        --data-root ../shared/data --precision bf16 --compile
    python bench/compute_curve.py --table --chart docs/img/compute-mnist-ipc10.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULT_OUT = HERE.parent / "results" / "compute-curve.jsonl"


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            sys.exit(f"error: {flag} takes NAME=VALUE, got {item!r}")
        out.append((name, value))
    return out


def run_points(run_dir: Path) -> list[dict]:
    """One point per snapshot of ``run_dir``: its iteration and CPU-hours."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if x.strip()]
    timed = [r for r in lines if "cpu_s" in r and "loss" in r]
    if len(timed) < 2:
        return []
    rate = statistics.median((b["cpu_s"] - a["cpu_s"]) / (b["iteration"] - a["iteration"])
                             for a, b in zip(timed, timed[1:]) if b["iteration"] > a["iteration"])
    # The count starts where ddcli began recording it (an older run's resume): the
    # iterations before are priced at the median rate.
    began = max(0.0, timed[0]["iteration"] - timed[0]["cpu_s"] / rate)
    offset = began * rate if began >= 1 else 0.0
    by_iter = {r["iteration"]: r["cpu_s"] for r in timed}
    points = []
    for snap in sorted((run_dir / "snapshots").glob("iter_*.pt")):
        it = int(snap.stem.split("_")[1])
        if it in by_iter:
            cpu, how = by_iter[it] + offset, "cpu_s" + (
                f" + {offset / 3600:.2f} h estimated for iterations 1-{round(began)}"
                if offset else "")
        else:
            cpu, how = it * rate, "estimated (median CPU-s per iteration)"
        points.append({"iteration": it, "snapshot": str(snap), "cpu_h": cpu / 3600,
                       "cpu_source": how})
    return points


def bundle_points(paths: list[str]) -> list[dict]:
    from ddcli import Bundle

    points, last_elapsed, cpu = [], 0.0, 0.0
    chain = sorted(((Bundle.load(p), p) for p in paths), key=lambda bp: bp[0].summary["iterations"])
    for b, p in chain:
        elapsed = float(b.summary["elapsed_s"])
        cpu += (elapsed - last_elapsed) * int(b.provenance.get("threads") or 1)
        last_elapsed = elapsed
        points.append({"iteration": int(b.summary["iterations"]), "bundle": p,
                       "cpu_h": cpu / 3600, "cpu_source": "wall x threads"})
    return points


def evaluate_points(args) -> None:
    from ddcli.data import load_dataset
    from ddcli.evaluate import EvalConfig, evaluate, evaluate_bundle
    from ddcli.evaluate._sets import PixelSpaceWarning
    from ddcli.infra import provenance

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["iteration"], r["protocol"], r["n_nets"],
                      r.get("split", "test")))
    extra = {name: float(h) for name, h in _pairs(args.extra, "--extra")}
    jobs = [(name, Path(d), p) for name, d in _pairs(args.run, "--run")
            for p in run_points(Path(d))]
    jobs += [(name, None, p) for name, paths in _pairs(args.bundles, "--bundles")
             for p in bundle_points(paths.split(","))]
    data = None
    for name, run_dir, point in jobs:
        if point["iteration"] < args.min_iteration or f"{name}@{point['iteration']}" in args.skip:
            continue
        split = f"validation:{args.validation}" if args.validation else "test"
        if (name, point["iteration"], args.protocol, args.n_nets, split) in done:
            continue
        data = data or load_dataset(args.dataset, root=args.data_root)
        cfg = EvalConfig(protocol=args.protocol, n_nets=args.n_nets,
                         precision=args.precision, compile=args.compile,
                         validation=args.validation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PixelSpaceWarning)
            if run_dir is not None:  # the bundle the run would have written there
                rep = evaluate(point["snapshot"], cfg, data=data)
            else:
                rep = evaluate_bundle(point["bundle"], cfg, data=data)
        for note in rep.notes:
            if note.startswith("warning:"):
                print(f"{name} @ {point['iteration']}: {note}", flush=True)
        rec = {"method": name, **point, "cpu_h": point["cpu_h"] + extra.get(name, 0.0),
               "extra_cpu_h": extra.get(name, 0.0), "protocol": args.protocol,
               "n_nets": args.n_nets, "split": split,
               "precision": args.precision, "compile": args.compile,
               "accuracies": rep.primary.accuracies, "mean": rep.primary.mean,
               "std": rep.primary.std, "eval_s": round(rep.elapsed_s, 1),
               "warnings": [n for n in rep.notes if n.startswith("warning:")],
               "provenance": provenance.collect(device="cpu")}
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name} @ {point['iteration']}: {100 * rec['mean']:.2f} ± {100 * rec['std']:.2f} %"
              f" on {split} at {rec['cpu_h']:.2f} CPU-h ({point['cpu_source']})", flush=True)


def select(out: Path) -> list[dict]:
    """Per method, the validation point with the best mean (the earliest of a tie): the
    set to bundle and to measure once on the test set."""
    chosen = []
    for method, rs in load(out).items():
        scored = [r for r in rs if str(r.get("split", "test")).startswith("validation")]
        if scored:
            chosen.append(max(scored, key=lambda r: (r["mean"], -r["iteration"])))
    return chosen


def selection_lines(out: Path, protocol: str) -> list[str]:
    lines = []
    for r in select(out):
        where = r.get("snapshot") or r.get("bundle")
        lines.append(f"{r['method']}: iteration {r['iteration']}, {100 * r['mean']:.2f} ± "
                     f"{100 * r['std']:.2f} % on {r['split']} ({r['n_nets']} nets)")
        if r.get("snapshot"):
            run = Path(r["snapshot"]).parent.parent
            bundle = f"results/{run.name}-{r['iteration']}.safetensors"
            lines.append(f"  dd export {where} --format bundle -o {bundle}")
            where = bundle
        lines.append(f"  dd eval {where} --protocol {protocol} --n-nets 5 "
                     "--baseline random-real")
    return lines


def load(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for line in out.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by.setdefault(r["method"], []).append(r)
    return {k: sorted(v, key=lambda r: r["iteration"]) for k, v in by.items()}


def table(out: Path) -> str:
    lines = ["| method | iterations | CPU-hours | how the CPU was counted | accuracy % (nets) | protocol |",
             "|---|---|---|---|---|---|"]
    for method, rs in load(out).items():
        for r in rs:
            if str(r.get("split", "test")) != "test":
                continue  # selection points: --select
            how = r["cpu_source"] + (f", + {r['extra_cpu_h']:.2f} up front" if r.get("extra_cpu_h") else "")
            lines.append(f"| {method} | {r['iteration']} | {r['cpu_h']:.2f} | {how} | "
                         f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} ({r['n_nets']}) | "
                         f"{r['protocol']}{' bf16' if r.get('precision') == 'bf16' else ''} |")
    return "\n".join(lines)


def chart(out: Path, png: Path, title: str, baseline: float | None) -> None:
    from ddcli.viz import line_chart, save_png

    tested = {m: [r for r in rs if str(r.get("split", "test")) == "test"]
              for m, rs in load(out).items()}
    series = {m: ([r["cpu_h"] for r in rs], [100 * r["mean"] for r in rs])
              for m, rs in tested.items() if rs}
    if baseline is not None:  # random real images of the same size: a flat reference
        xs = [x for s in series.values() for x in s[0]]
        series["random real"] = ([0.0, max(xs) if xs else 1.0], [baseline, baseline])
    image = line_chart(series, title=title, x_label="CPU-hours spent distilling",
                       y_label="test accuracy (%)", points=True)
    save_png(image, png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    ap.add_argument("--bundles", action="append", default=[], metavar="NAME=A,B,...")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=HOURS",
                    help="CPU-hours of up-front work (expert trajectories)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--protocol", default="dc", choices=["train", "dc", "dsa", "mtt"])
    ap.add_argument("--n-nets", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--min-iteration", type=int, default=0)
    ap.add_argument("--skip", action="append", default=[], metavar="NAME@ITERATION",
                    help="leave one point out (the budget)")
    ap.add_argument("--data-root", default=os.environ.get("DDCLI_DATA_ROOT"))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--validation", type=int, default=0, metavar="N",
                    help="score on N held-out training images, not the test set")
    ap.add_argument("--select", action="store_true",
                    help="print each method's best validation point and how to test it")
    ap.add_argument("--table", action="store_true", help="print the table of --out")
    ap.add_argument("--chart", type=Path, help="draw the chart of --out to this PNG")
    ap.add_argument("--title", default="MNIST, 10 images per class: accuracy for the compute")
    ap.add_argument("--baseline", type=float, default=None,
                    help="random real accuracy (%%) under the same protocol, drawn flat")
    args = ap.parse_args()
    if args.run or args.bundles:
        evaluate_points(args)
    if args.select:
        print("\n".join(selection_lines(Path(args.out), args.protocol)))
    if args.table:
        print(table(Path(args.out)))
    if args.chart:
        chart(Path(args.out), args.chart, args.title, args.baseline)
        print(args.chart)


if __name__ == "__main__":
    main()
