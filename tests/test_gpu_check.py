"""bench/gpu_check.sh on the CPU: every step runs on the committed MNIST fixture (and
CIFAR-10 stand-ins) and prints its line; a step that can't run fails the script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NUM = r"(\d+(?:\.\d+)?)"
MIB = r"[\d,]+ MiB"
LINES = [
    rf"gpu_check device: cpu \(.+, 1 thread\(s\)\), torch \S+, sgemm 2048\^2 {NUM} GFLOP/s",
    r"gpu_check data: .+ \(stand-ins\)",
    *(rf"distill {name}: {preset} \({model}\), T=2, batch 32: {NUM} s/iter, peak GPU memory "
      rf"n/a, peak RSS {MIB}, floor {NUM} s, {NUM}x floor"
      for name, preset, model in [("mnist", "paper-mnist-fixed", "lenet"),
                                  ("cifar10", "paper-cifar10-fixed", "alexcifarnet"),
                                  ("dm cifar10", "dm-cifar10-ipc10", "convnet")]),
    rf"eval train: convnet width 16, 10/class, 2 epochs, 500 test images: {NUM} s/net, peak "
    rf"GPU memory n/a, floor {NUM} s, {NUM}x floor",
    rf"vmap batching: 3 nets, 2 epochs: vmap {NUM} s, loop {NUM} s \({NUM}x\), floor {NUM} s "
    rf"\(vmap {NUM}x, loop {NUM}x\), accuracies differ by at most {NUM}",
    rf"eval cli: dd eval --protocol train, 2 nets, 2 epochs: accuracy {NUM} \+- {NUM}, "
    rf"{NUM} s \(exit 0\)",
    rf"eval levers: dd eval --protocol dsa --precision bf16, 2 nets, 2 epochs: {NUM} s, fp32 "
    rf"{NUM} s \({NUM}x\), accuracy {NUM} vs fp32 {NUM}",
    rf"gpu_check: all steps passed in {NUM} s",
]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "DDCLI_DATA_ROOT": "/nonexistent"}  # nothing may come from a real data folder
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_every_step_runs_on_the_cpu_and_prints_its_line():
    done = _run("--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(LINES), done.stdout
    for line, pattern in zip(lines, LINES):
        match = re.fullmatch(pattern, line)
        assert match, (pattern, line)
        assert all(float(v) >= 0 for v in match.groups()), line
    accuracy = float(re.fullmatch(LINES[7], lines[7]).group(1))
    assert 0 <= accuracy <= 1
    assert float(re.fullmatch(LINES[6], lines[6]).group(7)) <= 0.1  # vmap agrees with loop
    levers = [float(v) for v in re.fullmatch(LINES[8], lines[8]).groups()]
    assert 0 <= levers[3] <= 1 and 0 <= levers[4] <= 1
    for line in lines[2:7]:  # every timing is a positive number of seconds
        assert float(re.search(rf"{NUM} s", line.split(": ", 1)[1]).group(1)) > 0, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_it_fails_loudly_where_a_step_cannot_run():
    done = _run()  # cuda, on a machine without one
    assert done.returncode != 0 and "no CUDA device" in done.stderr
    assert "all steps passed" not in done.stdout
