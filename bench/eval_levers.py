"""One train-protocol step (ConvNet-128, 100 MNIST-sized images, SGD's gradient) under each
lever: precision (fp32, bf16 autocast), memory format (NCHW, channels-last) and the
instance norm's kernel (group norm, ``F.instance_norm``); ``--profile`` prints where an
fp32 or bf16 step goes, by op.

    OMP_NUM_THREADS=1 python bench/eval_levers.py
    OMP_NUM_THREADS=1 python bench/eval_levers.py --profile bf16

The step is written out in plain ``torch.nn.functional`` (the ConvNet's layers: conv 3x3,
instance norm with affine, ReLU, 2x2 average pooling, three times, then a linear layer)
so each lever changes one thing; ``bench/floor.py --train-protocol`` times the real code.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

C, N = 128, 100


def make(fmt: str):
    g = torch.Generator().manual_seed(0)
    mf = torch.channels_last if fmt == "channels-last" else torch.contiguous_format
    convs = [torch.randn(C, 1, 3, 3, generator=g) * 0.3]
    convs += [torch.randn(C, C, 3, 3, generator=g) * 0.03 for _ in range(2)]
    convs = [w.contiguous(memory_format=mf).requires_grad_() for w in convs]
    affine = [torch.ones(C, requires_grad=True) for _ in range(3)]
    shift = [torch.zeros(C, requires_grad=True) for _ in range(3)]
    fc = (torch.randn(10, C * 4 * 4, generator=g) * 0.01).requires_grad_()
    x = torch.randn(N, 1, 28, 28, generator=g).contiguous(memory_format=mf)
    y = torch.arange(10).repeat_interleave(N // 10)
    return convs, affine, shift, fc, x, y


def step_fn(fmt: str, norm: str, precision: str):
    convs, affine, shift, fc, x, y = make(fmt)
    params = convs + affine + shift + [fc]

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = x
            for i, w in enumerate(convs):
                h = F.conv2d(h, w, padding=3 if i == 0 else 1)  # 28 px padded as the ConvNet
                h = (F.group_norm(h, C, affine[i], shift[i]) if norm == "group-norm" else
                     F.instance_norm(h, weight=affine[i], bias=shift[i]))
                h = F.avg_pool2d(F.relu(h), 2)
            loss = F.cross_entropy(F.linear(h.flatten(1), fc), y)
        torch.autograd.grad(loss, params)

    return step


def best_ms(step, repeats: int) -> float:
    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--profile", choices=["fp32", "bf16"], help="profile one precision, NCHW")
    args = ap.parse_args()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = step_fn("nchw", "group-norm", args.profile)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ms per step (best of "
          f"{args.repeats})\n")
    print("| precision | format | norm kernel | ms |\n|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        for fmt in ("nchw", "channels-last"):
            for norm in ("group-norm", "instance-norm"):
                ms = best_ms(step_fn(fmt, norm, precision), args.repeats)
                print(f"| {precision} | {fmt} | {norm} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
