"""Accuracy-vs-iteration curves from run folders' metrics.jsonl, drawn with ddcli's chart.

    .venv/bin/python bench/plot_curves.py RUN_DIR [RUN_DIR ...] -o docs/img/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddcli.viz import line_chart, save_png


def read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        key = next((k for k in ("test_acc", "val_acc") if k in rec), None)
        if key:  # val_acc: the run held out a validation split (--validation)
            xs.append(rec["iteration"])
            ys.append(100 * rec[key])
    return xs, ys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--title", default="replay test accuracy during distillation")
    args = ap.parse_args()
    series = {run.name.removesuffix(".run"): read_curve(run) for run in args.runs}
    image = line_chart(series, title=args.title, x_label="outer iteration",
                       y_label="test accuracy (%)", points=True)
    save_png(image, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
