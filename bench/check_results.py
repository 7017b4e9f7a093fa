"""Re-check the numbers on docs/results.md: `dd eval` every bundle listed in
results/index.json with its recorded arguments and compare each row's mean and std.

    OMP_NUM_THREADS=1 .venv/bin/python bench/check_results.py --data-root DIR [NAME ...]

An entry is keyed by its bundle's file name; a further evaluation of the same bundle (another
protocol) is keyed by any label and names its "bundle". Evaluation is seeded (fresh nets
0..n-1), so the figures must match to the 4 decimals the index keeps; a mismatch is printed and the exit status is 1. Each evaluation runs
with the thread count its row was recorded with: one, or the entry's "threads".

Rows are evaluated with this checkout's code, so the check also catches a change that
moves a default path's rounding. An entry that names a "commit" was recorded with code
whose rounding an opt-in lever has since changed (`dd eval --compile` on 2026-12-07): it
is evaluated with that commit's code, from a temporary `git worktree` (a clone with the
history, not a shallow one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "results" / "index.json"


class Trees:
    """The code to evaluate a row with: this checkout, or a temporary worktree of the
    commit the entry names (one per commit, removed at exit)."""

    def __init__(self, stack: ExitStack, root: Path = ROOT) -> None:
        self.stack, self.root, self.made = stack, root, {}

    def __call__(self, commit: str | None) -> Path:
        if not commit:
            return self.root
        if commit not in self.made:
            git = ["git", "-C", str(self.root)]
            found = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                                   capture_output=True, text=True)
            if found.returncode != 0:
                sys.exit(f"error: commit {commit} is not in this clone; fetch its history "
                         f"(git fetch --unshallow) to check the rows recorded with it")
            tree = Path(self.stack.enter_context(tempfile.TemporaryDirectory())) / "tree"
            subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(tree), commit],
                           check=True)
            self.stack.callback(subprocess.run, [*git, "worktree", "remove", "--force", str(tree)],
                                capture_output=True)
            self.made[commit] = tree
        return self.made[commit]


def check(name: str, entry: dict, data_root: str | None, tree: Path = ROOT) -> list[str]:
    # an entry is keyed by its bundle's file name, or names the bundle itself ("bundle")
    # when it records another evaluation of a bundle that has an entry already
    # the bundle is this checkout's; the code is ``tree``'s (ROOT, or the entry's commit)
    cmd = [sys.executable, "-m", "ddcli", "eval", str(ROOT / "results" / entry.get("bundle", name)),
           *entry["eval_args"], "--json", "--quiet"]
    if data_root:
        cmd += ["--data-root", data_root]
    # Rows are recorded with one thread unless the entry says otherwise ("threads"): the
    # float rounding of training, and so the 4th decimal, depends on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(entry.get("threads", 1))}
    if tree != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        return [f"{name}: dd eval failed: {proc.stderr.strip()}"]
    rows = {row["label"]: row for row in json.loads(proc.stdout)["rows"]}
    problems = []
    for label, want in entry["rows"].items():
        got = rows.get(label)
        if got is None:
            problems.append(f"{name}: no row {label!r}")
            continue
        for key in ("mean", "std"):
            if round(got[key], 4) != round(want[key], 4):
                problems.append(f"{name} / {label}: {key} {got[key]:.4f}, the page says "
                                f"{want[key]:.4f}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="bundles to check (default: all in the index)")
    ap.add_argument("--data-root", help="passed to dd eval")
    args = ap.parse_args()
    index = json.loads(INDEX.read_text())
    # a bundle's name with or without its .safetensors
    names = [n if n in index else f"{n}.safetensors" for n in args.names] or sorted(index)
    unknown = [n for n in names if n not in index]
    if unknown:
        sys.exit(f"error: {unknown[0]} is not in {INDEX.relative_to(ROOT)}")
    problems = []
    with ExitStack() as stack:
        trees = Trees(stack)
        for name in names:
            commit = index[name].get("commit")
            found = check(name, index[name], args.data_root, trees(commit))
            at = f" (at {commit[:10]})" if commit else ""
            print(f"{name}{at}: {'ok' if not found else 'MISMATCH'}", flush=True)
            problems += found
    for line in problems:
        print(line)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
