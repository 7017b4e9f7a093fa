"""Milliseconds per call of ddcli's DSA ops against the closest kornia.augmentation ops,
forward and backward to the pixels, on the batch shapes distillation uses.

    OMP_NUM_THREADS=1 .venv/bin/python bench/augment_speed.py

The kornia ops are the nearest equivalents, not the same transforms (kornia's colour
jitter and translation are parametrised differently from DSA's): the point is the cost
of one call. ddcli's op draws its parameters from a seeded generator each call; kornia's
from the global RNG (``aug(x, params=aug._params)`` replays them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddcli.core.augment import DSA


def _ms(fn, x: torch.Tensor, reps: int) -> float:
    times = []
    for i in range(reps + 3):
        xi = x.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        fn(xi, i).sum().backward()
        if i >= 3:  # warm-up calls left out
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    import kornia
    import kornia.augmentation as K

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--shapes", default="10x3x32x32,100x1x28x28,256x3x32x32")
    args = ap.parse_args()
    dsa = DSA()
    ours = {f: (lambda x, i, f=f: getattr(dsa, f"_{f}")(x, torch.Generator().manual_seed(i)))
            for f in ("flip", "rotate", "scale", "crop", "color", "cutout")}
    theirs = {
        "flip": K.RandomHorizontalFlip(p=0.5),
        "rotate": K.RandomRotation(degrees=15.0, p=1.0),
        "scale": K.RandomAffine(degrees=0.0, scale=(1 / 1.2, 1.2, 1 / 1.2, 1.2), p=1.0),
        "crop": K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=1.0),
        "color": K.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, p=1.0),
        "cutout": K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), p=1.0),
    }
    rows = []
    for shape in args.shapes.split(","):
        dims = tuple(int(d) for d in shape.split("x"))
        x = torch.rand(dims)
        for fam in ours:
            row = {"shape": shape, "op": fam, "ddcli_ms": round(_ms(ours[fam], x, args.reps), 3)}
            if fam == "color" and dims[1] != 3:
                row["kornia_ms"] = None  # kornia's saturation needs RGB
            else:
                aug = theirs[fam]
                row["kornia_ms"] = round(_ms(lambda x, i: aug(x), x, args.reps), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"kornia": kornia.__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
