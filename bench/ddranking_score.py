"""Score a ddcli CIFAR-10 set with the real DD-Ranking package, offline, on a small budget.

    pip install --no-deps ddranking==0.2.0 timm pandas tqdm pyyaml python-dateutil pytz tzdata six
    python bench/ddranking_score.py --random-real 10 --data-root /work/shared/data \\
        --work /tmp/ddr --epochs 30 --num-eval 2 --full-epochs 1 --test-size 2000
    python bench/ddranking_score.py m.safetensors --data-root /work/shared/data ...
    python bench/ddranking_score.py m-ddranking/ --data-root /work/shared/data ...

The input is a bundle (exported here with ``dd export --format ddranking``), such an
export folder, or ``--random-real IPC``: a bundle of IPC random CIFAR-10 training images
per class in ddcli's layout (IPC steps x 1 image per class), built from the data root.

DD-Ranking 0.2.0 (``LabelRobustScoreHard``) is run as it is; its rough edges are handled
here, from the caller's side, and never by editing the package:

- ``torchvision.datasets.CIFAR10(download=True)`` goes online when the md5 check fails
  (the shared CIFAR-10 pickles are pixel-exact but not byte-identical): it is swapped,
  for the run, for a subclass that reads the files without the check;
- there is no cached full-data accuracy for ConvNet-3 on CIFAR-10: it is measured with
  DD-Ranking's own real-data trainer (``--full-epochs``) and put into its cache dict;
- it tests only every 10th epoch (``test_interval``), so short runs report 0 %: the
  interval is set to the run's length (one test, at the end);
- its CSV writer crashes (the LRS list is appended twice, so pandas gets columns of
  different lengths): ``save_results`` is replaced by a JSON writer that keeps the lists;
- its LRS puts percentages into exp() (about -0.157 for any set): HLR and IOR are taken
  from its per-run results, converted to fractions, and LRS is computed with
  ``ddcli.evaluate.ddranking``;
- it seeds from the clock: ``set_seed`` is replaced by one seeded from ``--seed``;
- ``--test-size`` evaluates on a seeded random subset of the test set, for speed
  (10000 = DD-Ranking's full test set);
- MNIST and single-channel sets are not supported by DD-Ranking: ``dd export`` refuses them.

Writes ``WORK/result.json`` and prints it. Timing on a shared 2-core CPU: about 2 s per
256-image ConvNet-3 step, so one full-data epoch is ~7 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from ddcli import Bundle
from ddcli.core.rates import raw_from_lrs
from ddcli.data import load_dataset
from ddcli.evaluate.ddranking import hlr, ior, lrs
from ddcli.export import export

# DD-Ranking's DSA settings (README / REFERENCE.md): flip, rotate, colour, scale, crop, cutout.
DSA_PARAMS = {"flip": 0.5, "rotate": 15.0, "saturation": 2.0, "brightness": 1.0,
              "contrast": 0.5, "scale": 1.2, "crop": 0.125, "cutout": 0.5}
MODEL = "ConvNet-3"


def random_real_bundle(data_root: str, ipc: int, seed: int) -> Bundle:
    """IPC random training images per class as a bundle: IPC steps x 1 image per class."""
    data = load_dataset("cifar10", root=data_root)
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(data.train_y == c).flatten() for c in range(data.num_classes)]
    picks = [p[torch.randperm(len(p), generator=g)[:ipc]] for p in picks]
    idx = torch.stack(picks, dim=1)  # (ipc, classes): step s holds one image per class
    return Bundle(
        images=data.train_x[idx.reshape(-1)].reshape(ipc, data.num_classes, 3, 32, 32),
        labels=torch.arange(data.num_classes).repeat(ipc, 1),
        raw_lrs=raw_from_lrs(torch.full((ipc,), 0.01)), dataset="cifar10",
        classes=list(data.classes), mean=data.mean, std=data.std,
        model={"name": "convnet", "in_channels": 3, "num_classes": 10, "image_size": 32},
        init_mode="random", seed=seed, epochs=1,
        extra={"baseline": f"random-real, {ipc} per class, seed {seed}"},
        provenance={"made_by": "bench/ddranking_score.py --random-real"},
    )


def offline_datasets():
    """CIFAR10/100 that read the files under the root without md5 checks or downloads."""
    import torchvision.datasets as tvd

    def offline(base):
        class Offline(base):
            def __init__(self, root, train=True, transform=None, target_transform=None,
                         download=False):
                super().__init__(root, train=train, transform=transform,
                                 target_transform=target_transform, download=False)

            def _check_integrity(self) -> bool:  # the files are pixel-exact, not byte-exact
                return True

        Offline.__name__ = base.__name__
        return Offline

    return [mock.patch.object(tvd, "CIFAR10", offline(tvd.CIFAR10)),
            mock.patch.object(tvd, "CIFAR100", offline(tvd.CIFAR100))]


@contextlib.contextmanager
def patched(args, captured: list[dict]):
    """Every caller-side patch of the module docstring, undone on exit."""
    import ddranking.metrics.hard_label as hl
    from ddranking.utils import set_seed as clock_seed

    original_get_dataset = hl.get_dataset
    counter = iter(range(10**6))

    def seeded(seed=None):  # DD-Ranking calls set_seed() with no seed at every run
        clock_seed(args.seed + next(counter) if seed is None else seed)

    def small_test_set(*a, **k):
        out = list(original_get_dataset(*a, **k))
        if args.test_size < len(out[6]):
            g = torch.Generator().manual_seed(args.seed)
            keep = torch.randperm(len(out[6]), generator=g)[: args.test_size].tolist()
            out[6] = torch.utils.data.Subset(out[6], keep)  # dst_test_real
            out[7] = torch.utils.data.Subset(out[7], keep)  # dst_test_syn
        return tuple(out)

    def save_results(results, save_path):
        captured.append({k: [float(v) for v in vs] for k, vs in results.items()})
        Path(save_path).with_suffix(".json").write_text(json.dumps(captured[-1], indent=1))

    with contextlib.ExitStack() as stack:
        for p in offline_datasets():
            stack.enter_context(p)
        stack.enter_context(mock.patch.object(hl, "set_seed", seeded))
        stack.enter_context(mock.patch.object(hl, "get_dataset", small_test_set))
        stack.enter_context(mock.patch.object(hl, "save_results", save_results))
        stack.enter_context(mock.patch.dict(hl.REAL_DATA_ACC_CACHE))
        yield hl


def evaluator(hl, args, manifest, *, epochs: int, num_eval: int):
    ev = hl.LabelRobustScoreHard(
        dataset=manifest["evaluator_dataset"], real_data_path=args.data_root,
        ipc=manifest["ipc"], model_name=MODEL, data_aug_func="dsa", aug_params=dict(DSA_PARAMS),
        optimizer="sgd", lr_scheduler="step", step_size=max(1, epochs // 2), weight_decay=5e-4,
        momentum=0.9, use_zca=manifest["pixel_space"]["kind"] == "zca", num_eval=num_eval,
        num_epochs=epochs, real_batch_size=256, syn_batch_size=256, num_workers=0,
        save_path=str(Path(args.work) / "ddranking" / "scores.csv"), device="cpu",
        random_data_format="tensor", random_data_path=str(Path(args.work) / "random_data"),
        eval_full_data=False)
    ev.test_interval = epochs  # test once, after the last epoch (default: every 10th)
    return ev


def full_data_accuracy(hl, args, manifest) -> tuple[float, float]:
    """DD-Ranking's real-data trainer on all 50,000 images; cached per budget in WORK."""
    key = {"model": MODEL, "dataset": manifest["evaluator_dataset"], "epochs": args.full_epochs,
           "train_size": args.full_train_size, "test_size": args.test_size, "seed": args.seed,
           "zca": manifest["pixel_space"]["kind"] == "zca"}
    cache = Path(args.work) / "full_data_acc.json"
    known = json.loads(cache.read_text()) if cache.is_file() else []
    for entry in known:
        if entry["key"] == key:
            return entry["acc"], entry["seconds"]
    ev = evaluator(hl, args, manifest, epochs=args.full_epochs, num_eval=1)
    if args.full_train_size < len(ev.dst_train):  # smoke tests only: not the full data
        g = torch.Generator().manual_seed(args.seed)
        keep = torch.randperm(len(ev.dst_train), generator=g)[: args.full_train_size].tolist()
        ev.dst_train = torch.utils.data.Subset(ev.dst_train, keep)
    hl.set_seed()
    t0 = time.time()
    acc, _ = ev._compute_hard_label_metrics_helper(None, None, None, lr=None, mode="real")
    seconds = time.time() - t0
    cache.write_text(json.dumps(known + [{"key": key, "acc": acc, "seconds": seconds}], indent=1))
    return acc, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", nargs="?", help="a bundle, or a `dd export --format ddranking` folder")
    ap.add_argument("--random-real", type=int, metavar="IPC",
                    help="score IPC random CIFAR-10 training images per class instead")
    ap.add_argument("--data-root", required=True, help="holds cifar-10-batches-py/")
    ap.add_argument("--work", default="ddranking-work", help="scratch folder (and the cache)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs per synthetic/random run")
    ap.add_argument("--num-eval", type=int, default=2, help="evaluation runs (DD-Ranking: 5)")
    ap.add_argument("--full-epochs", type=int, default=1, help="epochs of the full-data run")
    ap.add_argument("--full-train-size", type=int, default=50000,
                    help="training images of the full-data run (smoke tests only; 50000 = all)")
    ap.add_argument("--test-size", type=int, default=2000, help="test images (10000 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if (args.set is None) == (args.random_real is None):
        ap.error("give a set or --random-real IPC")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    source = args.set
    if args.random_real is not None:
        source = work / f"random-real-ipc{args.random_real}.safetensors"
        random_real_bundle(args.data_root, args.random_real, args.seed).save(source)
    folder = Path(source)
    if folder.is_file():
        folder = export(folder, "ddranking", work / f"{folder.stem}-ddranking").path
    manifest = json.loads((folder / "manifest.json").read_text())
    images = torch.load(folder / "images.pt", weights_only=True)
    labels = torch.load(folder / "labels.pt", weights_only=True)
    lr = float(torch.load(folder / "lr.pt", weights_only=True))
    if labels.dim() == 2:  # soft labels: the hard-label score uses the slots' classes
        labels = torch.arange(manifest["num_classes"]).repeat_interleave(manifest["ipc"])

    captured: list[dict] = []
    with patched(args, captured) as hl:
        full_acc, full_seconds = full_data_accuracy(hl, args, manifest)
        hl.REAL_DATA_ACC_CACHE[f"{manifest['evaluator_dataset']}-{MODEL}"] = full_acc
        ev = evaluator(hl, args, manifest, epochs=args.epochs, num_eval=args.num_eval)
        t0 = time.time()
        reported = ev.compute_metrics(image_tensor=images, hard_labels=labels, syn_lr=lr)
        score_seconds = time.time() - t0

    runs = captured[-1]
    full = full_acc / 100
    per_run = []
    for h, i in zip(runs["hard_label_recovery"], runs["improvement_over_random"]):
        syn = full - h / 100  # HLR = full - syn, IOR = syn - random, in percent
        rand = syn - i / 100
        per_run.append({"syn": syn, "random": rand, "full": full, "hlr": hlr(full, syn),
                        "ior": ior(syn, rand), "lrs": lrs(ior(syn, rand), hlr(full, syn))})
    summary = {k: float(np.mean([r[k] for r in per_run])) for k in per_run[0]}
    spread = {k: float(np.std([r[k] for r in per_run])) for k in per_run[0]}
    result = {
        "set": str(source), "export": str(folder), "ipc": manifest["ipc"],
        "pixel_space": manifest["pixel_space"], "lr": lr,
        "budget": {"epochs": args.epochs, "num_eval": args.num_eval,
                   "full_epochs": args.full_epochs, "full_train_size": args.full_train_size,
                   "test_size": args.test_size,
                   "seed": args.seed, "threads": args.threads},
        "fractions_mean": summary, "fractions_std": spread, "runs": per_run,
        "full_data_seconds": full_seconds, "score_seconds": score_seconds,
        "ddranking_reported": {k: float(v) for k, v in reported.items()},
        "note": "ddranking_reported.label_robust_score_* is DD-Ranking's own LRS, computed "
                "from percentages; lrs above uses fractions",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ddranking": _version("ddranking"), "kornia": _version("kornia")},
        "wall_seconds": time.time() - t_start, "command": " ".join(sys.argv),
    }
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    random.seed(0)
    main()
