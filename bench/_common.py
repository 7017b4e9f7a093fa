"""Shared by the distillation benchmarks: one config per fresh process, s/iter, peak RSS.

Each configuration runs in its own Python process (``python bench/_common.py --worker``),
so the peak RSS it reports belongs to that configuration alone. Inside the worker:

- the real data is loaded and the framework warmed (``ddcli.core.memory.warm_framework``:
  one tiny meta-gradient and Adam step); then the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs``), so "peak RSS" is the peak while distilling, torch and the
  data included, and "+ over start" is what the run added on top of them;
- ``warmup`` iterations run untimed (allocator and kernel caches warm up), then
  ``iterations`` are timed, wall clock and CPU time of the process.

CPU time is reported because timings on a shared machine are noisy: wall time then
includes waiting for a core, CPU time mostly doesn't (it does include spinning).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ddcli import DistillConfig, distill
    from ddcli.core.memory import warm_framework
    from ddcli.data import load_dataset
    from ddcli.models import create_model

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    cfg_dict = spec["config"]
    cfg_dict.setdefault("optim", {})["iterations"] = spec["warmup"] + spec["iterations"]
    cfg = DistillConfig.from_dict(cfg_dict)
    data = load_dataset(cfg.data.dataset, root=cfg.data.data_root)
    # Page in what any run uses (Adam's imports, autograd's kernels) before "start", so
    # "+ over start" is what this configuration adds, comparable with --dry-run.
    warm_framework(create_model(cfg.model_name(data.name), in_channels=data.in_channels,
                                num_classes=data.num_classes, image_size=data.image_size,
                                **cfg.model.kwargs))
    marks: dict[int, tuple[float, float]] = {}

    class Clock:
        def on_iteration(self, info):
            marks[info.iteration] = (time.perf_counter(), time.process_time())

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
        reset = True
    except OSError:
        reset = False
    start_rss = _status_kib("VmRSS") * 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    marks[0] = (time.perf_counter(), time.process_time())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(spec.get("out") or Path(tmp) / "b.safetensors")
        result = distill(cfg, out=out, data=data, callbacks=Clock())
    peak = _status_kib("VmHWM") * 1024
    w, n = spec["warmup"], spec["iterations"]
    return {
        "s_per_iter": (marks[w + n][0] - marks[w][0]) / n,
        "cpu_s_per_iter": (marks[w + n][1] - marks[w][1]) / n,
        "peak_rss": peak if reset else None,
        "peak_gpu": torch.cuda.max_memory_allocated() if cuda else None,
        "start_rss": start_rss,
        "threads": torch.get_num_threads(),
        "nets_batched": result.bundle.summary.get("nets_batched"),
        "final_loss": result.final_loss,
    }


def measure(config: dict[str, Any], *, iterations: int, warmup: int = 2,
            threads: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Run one configuration in a fresh process and return its figures (``out``: keep
    the bundle there)."""
    spec = {"config": config, "iterations": iterations, "warmup": warmup, "threads": threads,
            "out": str(out) if out else None}
    proc = subprocess.run([sys.executable, str(HERE / "_common.py"), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mnist_config(data_root: str | None, *, epochs: int = 3, mode: str = "full",
                 init: dict[str, Any] | None = None, **run: Any) -> dict[str, Any]:
    """MNIST, LeNet, 10 steps x ``epochs`` (T = 10 * epochs), real batch 1024, on the CPU."""
    return {
        "data": {"dataset": "mnist", "data_root": data_root, "batch_size": 1024},
        "synth": {"steps": 10, "epochs": epochs},
        "init": init or {"mode": "fixed"},
        "run": {"device": "cpu", "unroll_memory": mode, "checkpoint_every": 0, "log_every": 0,
                **run},
    }


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(threads: int | None = None) -> str:
    """One line naming the machine, for the table's caption."""
    import platform

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    each = f"{threads} torch thread(s) per process, " if threads else ""
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{each}load average {load:.1f} at the end")


def base_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="folder holding MNIST (torchvision layout)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return ap


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
