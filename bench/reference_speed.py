"""ddcli side by side with the published reference code: s/iter, CPU s/iter, peak RSS.

    # the reference's own dependencies, kept out of ddcli's environment
    .venv/bin/python -m pip install --target /tmp/refdeps \\
        pyyaml tqdm six matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil
    .venv/bin/python bench/reference_speed.py --reference ~/src/dataset-distillation \\
        --reference-deps /tmp/refdeps --data-root /work/shared/data \\
        --dataset mnist --threads 2 --rounds 3

The reference is the code of Wang et al. 2018 (github SsnL/dataset-distillation), in a
checkout the user provides: none of it is part of ddcli. Each round runs its ``main.py``
once and then ddcli's equivalent preset once (A B A B ...), each in a fresh process,
on the paper's fixed-init path:

- ``mnist``: LeNet, ``paper-mnist-fixed``; ``cifar10``: AlexCifarNet with the
  reference's crop-flip augmentation, ``paper-cifar10-fixed``. Both: 10 steps x 3
  epochs (T = 30), one image per class per step, real batch 1024, one net with a fixed
  Xavier init, Adam(0.01, betas 0.5/0.999) on the images and rates: the paper's Table 1
  setting of 100 images (the reference README's MNIST fixed-init command adds
  ``--distill_steps 1``, its 10-image variant; this passes 10 steps).

The reference runs on the CPU (``--device_id -1``), reads ``--data-root`` (torchvision's
layout: ``MNIST/raw``, ``cifar-10-batches-py``), loads its real batches in its own
process (``--num_workers 0``: its CPU time and RSS are then all of its cost, as they are
for ddcli; its default of 8 loader processes would spread the per-image transforms
over other processes) and logs every iteration (``--log_interval 1``: one ``.item()``
more per iteration). The harness timestamps those lines as they arrive and stops the
run once it has enough. It times ``--iterations`` iterations after ``--warmup``,
skipping each one that overlaps the process the reference forks to draw its epoch-0
checkpoint (about 10 s of a core, which would compete for the cores) and the smaller
last batch of each pass over the real data. Peak RSS is the reference process's, counted
from its first iteration on (the peak counter is reset there, as ddcli's worker resets
its own before its first iteration: see bench/_common.py). "data s/iter" is the
reference's own logged wait for the next real batch, part of its s/iter.

Compatibility fixes applied to a temporary copy of the reference (never to the user's
checkout), each printed when applied; none changes what is computed:

1. ``train_distilled_image.py``: ``self.optimizer.zero_grad()`` becomes
   ``zero_grad(set_to_none=False)``. Since torch 2.0 ``zero_grad`` sets gradients to
   None; the reference then adds into ``.grad`` in place and fails. This restores the
   torch 1.x behaviour it was written for (gradients zeroed in place).
2. ``datasets/__init__.py`` (CIFAR-10 only): torchvision's CIFAR10 md5 check is
   bypassed. Local batches may be pixel-exact but not byte-exact (``data/README.md``
   of the shared data); with ``download=True`` the reference would otherwise try, and
   fail, to download.

Differences that remain: the reference transforms each real image through PIL
(``ToTensor``/``Normalize``, and for CIFAR-10 reflect-pad, crop and flip) in its data
loader, while ddcli keeps the normalised set as one tensor and augments batches with
tensor ops; that is counted in each side's s/iter, as each does it. The reference's
meta-gradient is its step-by-step scheme (ddcli's ``--unroll-memory stepwise``), ddcli
runs the preset's default (``full``). Random draws (init, images, batches) differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import base_parser, measure, mib, table

BATCH = 1024  # real images per iteration, as in both presets
PRESETS = {"mnist": "paper-mnist-fixed", "cifar10": "paper-cifar10-fixed"}

# The reference's README commands for a fixed init, with its defaults spelled out where
# they set what is computed (T = 10 x 3, 1 image/class/step, batch 1024, Xavier init).
REFERENCE_FLAGS = {
    "mnist": ["--dataset", "MNIST", "--arch", "LeNet", "--distill_lr", "0.02"],
    "cifar10": ["--dataset", "Cifar10", "--arch", "AlexCifarNet", "--distill_lr", "0.001"],
}
COMMON_FLAGS = ["--mode", "distill_basic", "--train_nets_type", "known_init", "--n_nets", "1",
                "--test_nets_type", "same_as_train", "--distill_steps", "10",
                "--distill_epochs", "3", "--distilled_images_per_class_per_step", "1",
                "--batch_size", str(BATCH), "--lr", "0.01", "--init", "xavier", "--init_param", "1",
                "--device_id", "-1", "--num_workers", "0", "--log_interval", "1", "--no_log"]

REFERENCE_DEPS = ("yaml", "tqdm", "six", "matplotlib", "torchvision")


@dataclass(frozen=True)
class Fix:
    path: str
    old: str
    new: str
    why: str
    datasets: tuple[str, ...] = ("mnist", "cifar10")


FIXES = (
    Fix("train_distilled_image.py", "self.optimizer.zero_grad()",
        "self.optimizer.zero_grad(set_to_none=False)",
        "torch >= 2.0 zero_grad() sets .grad to None; the reference adds into it in place"),
    Fix("datasets/__init__.py", "from torchvision import datasets, transforms\n",
        "from torchvision import datasets, transforms\n"
        "datasets.CIFAR10._check_integrity = lambda self: True  # local batches: not byte-exact\n",
        "torchvision's CIFAR-10 md5 check rejects pixel-exact local batches", ("cifar10",)),
)

# One training iteration of the reference, as its Trainer logs it.
ITERATION = re.compile(r"Epoch:\s*(\d+) \[\s*(\d+)/\s*(\d+) \(\s*\d+%\)\]\s+Loss: (\S+)\s+"
                       r"Data Time: ([\d.]+)s\s+Train Time: ([\d.]+)s")


def prepare_reference(src: Path, dst: Path, dataset: str) -> list[str]:
    """Copy the checkout ``src`` to ``dst`` and apply ``FIXES``; returns what was applied."""
    if not (src / "main.py").is_file() or not (src / "train_distilled_image.py").is_file():
        raise SystemExit(f"error: {src} is not a checkout of SsnL/dataset-distillation "
                         "(no main.py and train_distilled_image.py)")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "results", "data"))
    applied = []
    for fix in FIXES:
        if dataset not in fix.datasets:
            continue
        path = dst / fix.path
        text = path.read_text() if path.is_file() else ""
        if text.count(fix.old) != 1:
            raise SystemExit(f"error: {fix.path} of the reference does not contain "
                             f"{fix.old.strip()!r} exactly once; is it another version?")
        path.write_text(text.replace(fix.old, fix.new))
        applied.append(f"{fix.path}: {fix.why}")
    return applied


def parse_iteration(line: str) -> dict[str, Any] | None:
    """The fields of one reference iteration line, or None for any other line."""
    m = ITERATION.search(line)
    if m is None:
        return None
    return {"epoch": int(m[1]), "seen": int(m[2]), "size": int(m[3]), "loss": float(m[4]),
            "data_s": float(m[5]), "train_s": float(m[6])}


def window(marks: list[dict[str, Any]], warmup: int, iterations: int) -> dict[str, Any] | None:
    """s/iter, CPU s/iter and data s/iter over the first ``iterations`` clean iterations
    after ``warmup``, or None while ``marks`` holds too few.

    ``marks[i]`` is taken when iteration i's line arrived: ``t`` (wall), ``cpu`` (the
    process's CPU seconds), ``busy`` (a child process was running), ``short`` (the
    epoch's last, smaller real batch) and ``data_s``. Iteration i took
    ``marks[i] - marks[i - 1]``; it is clean unless a child ran at either end or its
    batch was short.
    """
    clean = [i for i in range(max(warmup, 1), len(marks))
             if not (marks[i - 1]["busy"] or marks[i]["busy"] or marks[i]["short"])]
    if len(clean) < iterations:
        return None
    picked = clean[:iterations]

    def per_iter(key: str) -> float:
        return sum(marks[i][key] - marks[i - 1][key] for i in picked) / iterations

    return {"s_per_iter": per_iter("t"), "cpu_s_per_iter": per_iter("cpu"),
            "data_s_per_iter": sum(marks[i]["data_s"] for i in picked) / iterations,
            "first": picked[0], "last": picked[-1]}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` itself (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running_children(pid: int) -> list[int]:
    """Children of ``pid`` that have not exited (zombies waiting to be reaped excluded)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            try:
                state = Path(f"/proc/{kid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state not in "ZX":
                out.append(kid)
    return out


def _kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def measure_reference(cmd: list[str], *, cwd: Path, env: dict[str, str], warmup: int,
                      iterations: int, timeout: float) -> dict[str, Any]:
    """Run the reference until ``window`` is complete, then stop it (and its children)."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log,
                            text=True, bufsize=1, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    marks: list[dict[str, Any]] = []
    tail: list[str] = []
    result, reset = None, False
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            it = parse_iteration(line)
            if it is None:
                continue
            t = time.perf_counter()
            marks.append({"t": t, "cpu": process_cpu(proc.pid),
                          "busy": bool(running_children(proc.pid)),
                          "short": it["seen"] + BATCH > it["size"], **it})
            if len(marks) == 1:  # the peak from the first iteration on, as ddcli's worker
                try:
                    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
                    reset = True
                except OSError:
                    pass
            result = window(marks, warmup, iterations)
            if result is not None:
                result["peak_rss"] = _kib(proc.pid, "VmHWM") * 1024
                result["peak_reset"] = reset
                break
    finally:
        timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.seek(0)
        err = log.read()
        log.close()
    if result is None:
        raise SystemExit(f"error: the reference stopped after {len(marks)} iterations "
                         f"(exit {proc.returncode}):\n{''.join(tail)}{err[-3000:]}")
    return result


def ddcli_config(dataset: str, data_root: str | None) -> dict[str, Any]:
    from ddcli.layering import build_config

    quiet = {"device": "cpu", "checkpoint_every": 0, "log_every": 0, "eval_every": 0}
    return build_config(preset=PRESETS[dataset], overrides={
        "data": {"data_root": data_root}, "run": quiet}).to_dict()


def with_settings(config: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """``config`` with SECTION.KEY=VALUE settings (VALUE read as JSON, else a string)."""
    out = json.loads(json.dumps(config))
    for item in settings:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section in out and isinstance(out[section], dict)):
            raise SystemExit(f"error: --also {item!r}: expected SECTION.KEY=VALUE with a "
                             f"section of the config ({', '.join(sorted(out))})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[section][name] = value
    return out


def _check_deps(python: str, env: dict[str, str]) -> None:
    code = "import " + ", ".join(REFERENCE_DEPS)
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        missing = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
        raise SystemExit(f"error: the reference's dependencies are missing ({missing}); "
                         "install them with `python -m pip install --target DIR pyyaml tqdm "
                         "six matplotlib ...` and pass --reference-deps DIR")


def caption(threads: int | None) -> str:
    import torch
    from machine import cpu_info, gemm_gflops

    n = threads or torch.get_num_threads()
    rate = gemm_gflops(2048, n, torch.float32, repeats=5)
    load = os.getloadavg()[0]
    return (f"{cpu_info()['cpu']}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{n} thread(s) per process, sgemm 2048^2 {rate:.0f} GFLOP/s, "
            f"load average {load:.1f} at the end")


def summary(runs: list[dict[str, Any]]) -> list[list[Any]]:
    """Min and median of each ddcli variant and of the reference over the rounds, and
    the variant / reference; then each side's peak RSS."""
    sides = list(dict.fromkeys(r["side"] for r in runs if r["side"] != "reference"))
    by = {side: [r for r in runs if r["side"] == side] for side in ["reference", *sides]}
    rows = []
    for side in sides:
        for stat, f in (("min", min), ("median", statistics.median)):
            ref, dd = (f(r["s_per_iter"] for r in by[s]) for s in ("reference", side))
            rows.append([f"{side}, {stat}", f"{ref:.3f}", f"{dd:.3f}", f"{dd / ref:.2f}x"])
    ref_rss = max(r["peak_rss"] for r in by["reference"])
    for side in sides:
        dd_rss = max(r["peak_rss"] for r in by[side])
        rows.append([f"{side}, peak RSS (max)", mib(ref_rss), mib(dd_rss),
                     f"{dd_rss / ref_rss:.2f}x"])
    return rows


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--reference", type=Path, required=True,
                    help="a checkout of SsnL/dataset-distillation (left untouched)")
    ap.add_argument("--reference-deps", type=Path, default=None,
                    help="folder prepended to the reference's PYTHONPATH (its pyyaml, tqdm, six, "
                         "matplotlib)")
    ap.add_argument("--reference-python", default=sys.executable,
                    help="interpreter for the reference (default: this one)")
    ap.add_argument("--dataset", choices=sorted(PRESETS), default="mnist")
    ap.add_argument("--iterations", type=int, default=20, help="timed outer iterations per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    ap.add_argument("--rounds", type=int, default=3, help="reference, ddcli, reference, ...")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per reference run")
    ap.add_argument("--also", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="also time ddcli with these settings (repeatable, one variant), in "
                         "the same rounds: e.g. run.precision=bf16-outer")
    args = ap.parse_args()
    if not args.reference.is_dir():
        raise SystemExit(f"error: --reference {args.reference} is not a folder")

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if args.threads:  # the reference never sets torch's threads itself
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        os.environ.update(OMP_NUM_THREADS=str(args.threads))
    ref_env = dict(env)
    if args.reference_deps:
        ref_env["PYTHONPATH"] = os.pathsep.join(
            [str(args.reference_deps.resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
    _check_deps(args.reference_python, ref_env)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    config = ddcli_config(args.dataset, args.data_root)
    variants = {"ddcli": config}
    if args.also:
        variants["ddcli " + " ".join(args.also)] = with_settings(config, args.also)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "reference"
        for fix in prepare_reference(args.reference.resolve(), copy, args.dataset):
            print(f"compatibility fix applied to the copy: {fix}", file=sys.stderr)
        cmd = [args.reference_python, "-u", "main.py", *COMMON_FLAGS,
               *REFERENCE_FLAGS[args.dataset]]
        if data_root:
            cmd += ["--dataset_root", data_root]
        for r in range(args.rounds):
            # A fresh results folder each round: finding its own earlier options file
            # there, the reference reads it with a yaml.load that PyYAML 6 refuses.
            results = ["--results_dir", str(Path(tmp) / f"results-{r + 1}")]
            ref = measure_reference(cmd + results, cwd=copy, env=ref_env, warmup=args.warmup,
                                    iterations=args.iterations, timeout=args.timeout)
            runs.append({"side": "reference", "round": r + 1, **ref})
            times = []
            for side, cfg in variants.items():
                dd = measure(cfg, iterations=args.iterations, warmup=args.warmup,
                             threads=args.threads)
                runs.append({"side": side, "round": r + 1, **dd})
                times.append(f"{side} {dd['s_per_iter']:.3f}")
            print(f"round {r + 1}: reference {ref['s_per_iter']:.3f} s/iter (its iterations "
                  f"{ref['first']}-{ref['last']}, from 0), {', '.join(times)}", file=sys.stderr)

    rows = [[r["round"], r["side"], f"{r['s_per_iter']:.3f}", f"{r['cpu_s_per_iter']:.3f}",
             mib(r["peak_rss"]),
             f"{r['data_s_per_iter']:.3f}" if "data_s_per_iter" in r else "-"] for r in runs]
    what = {"mnist": "MNIST LeNet", "cifar10": "CIFAR-10 AlexCifarNet, crop-flip"}[args.dataset]
    print(f"{what}, fixed init, T = 30, batch 1024; {args.iterations} timed iterations per run, "
          f"{args.rounds} rounds; {caption(args.threads)}\n")
    print(table(["round", "code", "s/iter", "CPU s/iter", "peak RSS", "data s/iter"], rows))
    print()
    print(table(["over rounds", "reference s/iter", "ddcli s/iter", "ddcli / reference"],
                summary(runs)))


if __name__ == "__main__":
    main()
