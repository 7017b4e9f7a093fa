"""The real side of gradient matching, one class: a ConvNet's weight gradient on a batch
of real images, under each speed lever, in one process (same sitting, same load).

    OMP_NUM_THREADS=1 python bench/real_grad_levers.py [--dataset cifar10] [--batch 256]

Variants: eager fp32 NCHW (the default), eager fp32 channels-last (DM's CPU layout),
eager bf16 autocast, ``torch.compile`` of ``torch.func.grad`` of the loss
(``ddcli.core.steps.compiled_grads``, ``dd eval --compile``'s), and
``compiled_loss_grads`` (the loss compiled, its backward by AOTAutograd; gradient
matching's ``--compile``), each in fp32 and bf16. Random images of the dataset's shape:
the time does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import time

import torch

from ddcli.core.params import init_params
from ddcli.core.steps import compiled_grads, compiled_loss_grads, model_loss
from ddcli.models import create_model
from machine import cpu_info, gemm_gflops

SHAPES = {"cifar10": (3, 32), "mnist": (1, 28), "fashion-mnist": (1, 28)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="cifar10", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    channels, size = SHAPES[args.dataset]
    model = create_model("convnet", in_channels=channels, num_classes=10, image_size=size)
    params = init_params(model, "default", 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, channels, size, size, generator=g)
    y = torch.zeros(args.batch, dtype=torch.long)
    eager = _eager(model)
    func_grad = compiled_grads(model)
    aot = compiled_loss_grads(model)

    def leaves():
        return {k: v.detach().requires_grad_(True) for k, v in params.items()}

    variants = [
        ("eager fp32 NCHW (default)", False, lambda: eager(leaves(), x, y)),
        ("eager fp32 channels-last", False,
         lambda: eager(leaves(), x.contiguous(memory_format=torch.channels_last), y)),
        ("eager bf16", True, lambda: eager(leaves(), x, y)),
        ("compiled_grads fp32 (func.grad)", False, lambda: func_grad(leaves(), x, y)),
        ("compiled_grads bf16 (func.grad)", True, lambda: func_grad(leaves(), x, y)),
        ("compiled_loss_grads fp32", False, lambda: aot(leaves(), x, y)),
        ("compiled_loss_grads bf16", True, lambda: aot(leaves(), x, y)),
    ]
    threads = torch.get_num_threads()
    sgemm = gemm_gflops(2048, threads, torch.float32, 3)
    print(f"{cpu_info()['cpu']}, torch {torch.__version__}, {threads} thread(s), sgemm "
          f"2048^2 {sgemm:.1f} GFLOP/s; {args.dataset} ConvNet-128, {args.batch} images")
    print("| variant | ms per class | x default |\n|---|---|---|")
    base = None
    for name, bf16, fn in variants:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            fn()  # compile, warm up
            t = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            ms = (time.perf_counter() - t) / args.repeats * 1e3
        base = base or ms
        print(f"| {name} | {ms:.0f} | {base / ms:.2f} |", flush=True)


def _eager(model):
    loss = model_loss(model)

    def grads(params, x, y):
        return torch.autograd.grad(loss(params, x, y), tuple(params.values()))
    return grads


if __name__ == "__main__":
    main()
