"""Seconds to evaluate 20 nets, batched (vmap) vs looped, in each `dd eval` protocol.

Make the bundle first (MNIST, LeNet, fixed init, 10 steps x 3 epochs):

    .venv/bin/dd distill mnist --data-root /work/shared/data --iterations 100 \
        -o /tmp/eval_bench.safetensors --quiet
    .venv/bin/python bench/eval_speed.py --data-root /work/shared/data

Each protocol runs exactly as `dd eval` runs it, on the full test set:

- replay: 20 fresh inits replay the 30 learned steps; test accuracy before training and
  after each of the 3 epochs (4 passes over the 10k test images per net);
- replay-gd: the same without the test passes (the 30 GD steps only);
- train: 20 fresh nets, 300 epochs of SGD on the 100 images, then one test pass;
- inference: one pass over the test set for 20 nets.

Each runs with ``batched=True`` (vmap over stacked parameters), ``False`` (a loop over
nets) and ``None`` (auto: what `dd eval` does; on CPUs vmap only for the replay's GD
steps). The paths compute the same thing: in float64 their accuracies are identical; in
float32 rounding differs, and replaying from unseen inits or 300 SGD epochs can amplify
it into a few flipped test images per net (reported here).
On a shared CPU, run with OMP_NUM_THREADS=1 (or --threads 1): oversubscribed OpenMP
threads make every path many times slower and the comparison meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ddcli import Bundle
from ddcli.core.params import init_params
from ddcli.core.seeds import derive_seed
from ddcli.data import load_dataset
from ddcli.evaluate import replay_accuracies, train_accuracies
from ddcli.core.metrics import activation_floats, correct_counts
from ddcli.core.params import stack_params
from ddcli.evaluate._many_nets import supports_vmap
from ddcli.models import create_model


PATHS = {"vmap": True, "loop": False, "auto": None}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="/tmp/eval_bench.safetensors")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-nets", type=int, default=20)
    ap.add_argument("--train-epochs", type=int, default=300)
    ap.add_argument("--only", choices=["replay", "replay-gd", "train", "inference"], nargs="*")
    ap.add_argument("--paths", choices=list(PATHS), nargs="*",
                    default=["vmap", "auto", "loop"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    b = Bundle.load(args.bundle)
    data = load_dataset(b.dataset, root=args.data_root)
    model = create_model(**b.model)
    inits = [init_params(model, b.init_scheme, derive_seed(0, "eval", j))
             for j in range(args.n_nets)]
    seeds = [derive_seed(0, "shuffle", j) for j in range(args.n_nets)]
    x, y = b.flat()
    lr = float(b.lrs.mean())
    steps, total = b.steps, b.lrs.numel()
    at = sorted({0, *range(steps, total + 1, steps), total})
    act = activation_floats(model, b.input_shape)
    supports_vmap(model, b.input_shape)  # warm-up: the first vmap(grad) in a process is slow

    def run(name, batched):
        if name == "replay":
            return replay_accuracies(model, inits, b.images, b.labels, b.lrs, data.test_x,
                                     data.test_y, at=at, batched=batched)[-1]
        if name == "replay-gd":  # test on one image: the GD steps dominate
            return replay_accuracies(model, inits, b.images, b.labels, b.lrs, data.test_x[:1],
                                     data.test_y[:1], batched=batched)[-1]
        if name == "train":
            return train_accuracies(model, inits, x, y, data.test_x, data.test_y, lr=lr,
                                    epochs=args.train_epochs, seeds=seeds, batched=batched)
        return correct_counts(model, stack_params(inits), data.test_x, data.test_y, act,
                              vmapped=bool(batched))

    results = {"bundle": args.bundle, "n_nets": args.n_nets, "test_images": len(data.test_y),
               "train_epochs": args.train_epochs, "torch": torch.__version__,
               "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "seconds": {}}
    for name in args.only or ["inference", "replay-gd", "replay", "train"]:
        row, outs = {}, {}
        for path in args.paths:
            seconds, out = timed(lambda: run(name, PATHS[path]))
            row[path] = round(seconds, 2)
            outs[path] = out.double().cpu()
        # float32 rounding differs between paths, and a replay or 300 epochs of SGD can
        # amplify it; report the largest per-net gap (test images) and the mean's gap.
        ref = outs[args.paths[-1]]
        scale = len(data.test_y) if name != "inference" else 1
        gaps = [o - ref for o in outs.values()]
        row["max_net_diff_images"] = max(float(g.abs().max()) * scale for g in gaps)
        row["mean_diff_points"] = 0.0 if name == "inference" else max(
            abs(float(g.mean())) * 100 for g in gaps)
        results["seconds"][name] = row
        print(f"{name:10s} {args.n_nets} nets: " + "  ".join(
            f"{p} {row[p]:7.2f}s" for p in args.paths)
            + f"  max per-net diff {row['max_net_diff_images']:.0f} images,"
            f" mean diff {row['mean_diff_points']:.2f} points", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
