"""The machine a benchmark ran on: CPU model, ISA extensions, torch, and its sgemm rate.

    .venv/bin/python bench/machine.py            # markdown, for the docs
    .venv/bin/python bench/machine.py --json     # one JSON object (bench/floor.py reads it)

The sgemm rate is what the FLOP floor of ``bench/floor.py`` divides by: the best of
``--repeats`` timed float32 matmuls of two ``--size``-square matrices, at each thread
count in ``--threads`` (default 1 and every core). It is a peak the convolutions of a
small network rarely reach, so "x times the floor" is an upper bound on what kernels
could still gain. The bf16 rate is measured too: with AVX512-BF16 (and more so AMX)
oneDNN runs bf16 matmuls faster than float32, which is what a mixed-precision outer
loss could use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

# The ISA extensions that decide which kernels oneDNN and MKL pick on x86.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the ISA flags of interest, from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: model from platform, no flags
        pass
    hypervisor = "hypervisor" in flags
    return {"cpu": model, "cores": os.cpu_count(), "virtualised": hypervisor,
            "isa": [f for f in ISA_FLAGS if f in flags],
            "isa_missing": [f for f in ISA_FLAGS if flags and f not in flags]}


def gemm_gflops(size: int, threads: int, dtype, repeats: int, device: str = "cpu") -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size``-square matmul at ``threads`` threads
    (CPU threads; on a GPU ``threads`` changes nothing)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g).to(device, dtype)
        b = torch.randn(size, size, generator=g).to(device, dtype)
        out = torch.empty(size, size, dtype=dtype, device=device)
        torch.mm(a, b, out=out)  # warm: kernel selection, page faults on out
        sync()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            sync()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    return 2 * size**3 / best / 1e9


def describe(size: int = 2048, threads: list[int] | None = None,
             repeats: int = 10) -> dict[str, Any]:
    """Everything above as one dict: cpu, torch and ``sgemm``/``bf16_gemm`` GFLOP/s by threads."""
    import torch

    threads = threads or sorted({1, os.cpu_count() or 1})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = cpu_info()
    info.update({
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "gemm_size": size,
        "sgemm_gflops": {t: round(gemm_gflops(size, t, torch.float32, repeats), 1)
                         for t in threads},
        "bf16_gemm_gflops": {t: round(gemm_gflops(size, t, torch.bfloat16, repeats), 1)
                             for t in threads},
        "load_average": round(load, 2),
    })
    return info


def markdown(info: dict[str, Any]) -> str:
    rates = ", ".join(f"{t} thread(s) {g}" for t, g in info["sgemm_gflops"].items())
    bf16 = ", ".join(f"{t} thread(s) {g}" for t, g in info["bf16_gemm_gflops"].items())
    return "\n".join([
        f"- CPU: {info['cpu']}, {info['cores']} cores"
        f"{' (virtualised)' if info['virtualised'] else ''}",
        f"- ISA: {' '.join(info['isa']) or 'n/a'}; absent: {' '.join(info['isa_missing']) or 'none'}",
        f"- torch {info['torch']} (kernels: {info['cpu_capability']}, oneDNN "
        f"{'yes' if info['mkldnn'] else 'no'}), {info['torch_threads']} threads by default",
        f"- sgemm {info['gemm_size']}^2, GFLOP/s: {rates}",
        f"- bf16 gemm {info['gemm_size']}^2, GFLOP/s: {bf16}",
        f"- load average {info['load_average']} when measured",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    info = describe(args.size, args.threads, args.repeats)
    print(json.dumps(info) if args.json else markdown(info))


if __name__ == "__main__":
    main()
