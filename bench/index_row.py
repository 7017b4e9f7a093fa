"""Add a row to results/index.json (or replace it) from a `dd eval --json` report.

    OMP_NUM_THREADS=1 dd eval results/NAME.safetensors ARGS... --json > /tmp/NAME.json
    python bench/index_row.py results/NAME.safetensors --preset PRESET --report /tmp/NAME.json -- ARGS...

The entry holds what `bench/check_results.py` needs to evaluate the bundle again: the
`dd eval` arguments (ARGS, without --data-root, --json or --quiet), each row's mean, std and
number of nets (4 decimals), the thread count it ran with (`--threads`: it moves the 4th
decimal), and how the bundle was made: its preset and the settings where the bundle's
config departs from that preset (`distill_overrides`; the data root and device are the
machine's, not the method's). A report written by `dd eval --record` (a `.eval.json`
sidecar) works as well: its last evaluation is taken.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "results" / "index.json"
MACHINE = {("data", "data_root"), ("run", "device")}  # where it ran, not how it was made
DROPPED = {"--json", "--quiet", "--record"}


def departures(made: dict, preset: dict) -> dict:
    """``{section: {key: value}}`` where ``made`` differs from ``preset``."""
    out: dict = {}
    for section, values in made.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if (section, key) not in MACHINE and preset.get(section, {}).get(key) != value:
                out.setdefault(section, {})[key] = value
    return out


def eval_args(args: list[str]) -> list[str]:
    """The evaluation's own arguments: no output flags, no data root (the machine's)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--data-root":
            skip = True
        elif a not in DROPPED and not a.startswith("--data-root="):
            out.append(a)
    return out


def report_rows(report: dict) -> dict:
    if "evaluations" in report:  # a --record sidecar: the latest evaluation
        report = report["evaluations"][-1]
    return {r["label"]: {"mean": round(r["mean"], 4), "std": round(r["std"], 4), "n": r["n"]}
            for r in report["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(usage="%(prog)s BUNDLE --preset PRESET --report JSON "
                                       "[--pool DIR] [--threads N] -- EVAL_ARGS...",
                                 description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("bundle", type=Path, help="a bundle under results/")
    ap.add_argument("--preset", required=True, help="the preset the run started from")
    ap.add_argument("--report", type=Path, required=True, help="dd eval --json output")
    ap.add_argument("--pool", help="the pool folder a pretrained preset needs to build")
    ap.add_argument("--threads", type=int, default=1, help="the evaluation's OMP_NUM_THREADS")
    ap.add_argument("--selected", help="how the set was chosen, if it was (a snapshot picked "
                                       "on a validation split: which, among what, on what)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # dd eval's own arguments follow --
    args = ap.parse_args(argv[:cut])
    args.args = argv[cut + 1:]

    from ddcli import Bundle, DistillConfig
    from ddcli.layering import build_config

    bundle = args.bundle.resolve()
    if bundle.parent != INDEX.parent:
        sys.exit(f"error: {args.bundle} is not in {INDEX.parent.relative_to(ROOT)}/")
    made = DistillConfig.from_dict(Bundle.load(bundle).config).to_dict()
    pool = {"init": {"pool": args.pool}} if args.pool else None
    preset = build_config(preset=args.preset, overrides=pool).to_dict()
    if args.pool:
        preset["init"]["pool"] = None  # the pool's path is the machine's
    entry = {"eval_args": eval_args(args.args),
             "rows": report_rows(json.loads(args.report.read_text())),
             "threads": args.threads,
             "preset": args.preset, "distill_overrides": departures(made, preset)}
    if args.selected:
        entry["selected"] = args.selected
    index = json.loads(INDEX.read_text())
    index[bundle.name] = entry
    tmp = INDEX.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(INDEX)
    print(bundle.name, json.dumps(entry))


if __name__ == "__main__":
    main()
