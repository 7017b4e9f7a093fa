"""The CUDA path end to end, one step per line: s/iter, peak memory and the FLOP floor ratio.

Run through ``bench/gpu_check.sh`` (which sets the paths), where a GPU is:

    bench/gpu_check.sh                               # cuda, stand-in data in a temp folder
    bench/gpu_check.sh --data-root /data             # real MNIST and CIFAR-10
    bench/gpu_check.sh --device cpu                  # the same steps, tiny budgets (tested)

Steps, each printed as one line, and any failure ends the run with a non-zero status:

1. ``distill mnist``: a short paper-mnist-fixed run (LeNet), timed in a fresh process
   (``bench/_common.py``); its floor is ``bench/floor.py``'s count of the same config.
2. ``distill cifar10``: the same for paper-cifar10-fixed (AlexCifarNet).
   ``distill dm cifar10``: the same for dm-cifar10-ipc10 (DM, ConvNet; no unroll, the
   class-wise real embeddings are most of its FLOPs).
3. ``eval train``: one fresh ConvNet trained on 10 MNIST images per class and tested
   (``bench/floor.py``'s train protocol, timed and counted on the real images).
4. ``eval cli``: `dd eval --protocol train` on step 1's bundle, as a user runs it.
5. ``vmap batching``: several nets trained together (vmap over stacked weights) and one
   after another; both times, their floor ratios and how far their accuracies differ.
6. ``eval levers``: `dd eval --protocol dsa` on step 1's bundle in fp32 and with
   ``--precision bf16 --compile`` (bf16 only on a CPU, where compiling takes a minute);
   both times and both accuracies.

The floor is FLOPs over the device's float32 matmul rate (``bench/machine.py``). Without
``--data-root`` the data are stand-ins: MNIST from ``tests/fixtures`` (600 training
digits) and CIFAR-10 of random pixels of the same size; speed doesn't depend on pixels.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import measure, mib
from floor import config, count, problem, train_protocol
from machine import cpu_info, gemm_gflops

from ddcli.core.params import init_params
from ddcli.core.seeds import derive_seed
from ddcli.data import load_dataset
from ddcli.evaluate import train_accuracies
from ddcli.models import create_model

ROOT = Path(__file__).resolve().parents[1]

# Budgets per device kind: a GPU runs something like the real sizes, a CPU the least
# that still takes every path.
BUDGETS = {
    "cuda": dict(gemm=4096, batch=512, sets=[], warmup=3, iterations=20, width=128,
                 epochs=300, nets=8, vmap_epochs=100, cli_nets=4,
                 levers=["--precision", "bf16", "--compile"]),
    # The CPU leaves --compile out: a minute of compiling per process is the suite's
    # budget, and tests/test_speed_levers.py covers the compiled step.
    "cpu": dict(gemm=2048, batch=32, sets=["synth.steps=2", "synth.epochs=1"], warmup=1,
                iterations=2, width=16, epochs=2, nets=3, vmap_epochs=2, cli_nets=2,
                levers=["--precision", "bf16"]),
}


def stand_in_data(root: Path, per_class: tuple[int, int] = (60, 50)) -> Path:
    """MNIST from tests/fixtures and CIFAR-10 of random pixels (``per_class`` training
    and test images per class), in the layouts ``load_dataset`` reads."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "MNIST").exists():
        (root / "MNIST").symlink_to(ROOT / "tests" / "fixtures" / "MNIST")
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (10 * n, 3072), dtype=np.uint8),
                "labels": [i % 10 for i in range(10 * n)]}

    train, test = per_class
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, part in [*((n, batch(-(-train // 5))) for n in names), ("test_batch", batch(test))]:
        (folder / name).write_bytes(pickle.dumps(part, protocol=2))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}, protocol=2))
    return root


def peak_gpu(device: str) -> str:
    if not device.startswith("cuda"):
        return "n/a"
    return mib(torch.cuda.max_memory_allocated())


def distill_step(name: str, preset: str, budget: dict, device: str, rate: float, root: Path,
                 out: Path) -> None:
    sets = budget["sets"] + [f"data.batch_size={budget['batch']}", "run.checkpoint_every=0",
                             "run.log_every=0", f'data.data_root="{root}"']
    cfg = config(preset, sets, device)
    flops, _ = count(problem(preset, sets, device)[1])
    got = measure(cfg.to_dict(), iterations=budget["iterations"], warmup=budget["warmup"],
                  out=out)
    floor_s = flops / 1e9 / rate
    gpu = "n/a" if got["peak_gpu"] is None else mib(got["peak_gpu"])
    print(f"distill {name}: {preset} ({cfg.model_name()}), T={cfg.total_steps}, "
          f"batch {cfg.data.batch_size}: {got['s_per_iter']:.4f} s/iter, peak GPU memory "
          f"{gpu}, peak RSS {mib(got['peak_rss'])}, floor {floor_s:.4f} s, "
          f"{got['s_per_iter'] / floor_s:.1f}x floor", flush=True)


def class_slice(x: torch.Tensor, y: torch.Tensor, per_class: int):
    """The first ``per_class`` images of each class, class-major."""
    idx = torch.cat([(y == k).nonzero().flatten()[:per_class] for k in range(int(y.max()) + 1)])
    return x[idx], y[idx]


def eval_step(budget: dict, device: str, rate: float, root: Path) -> None:
    data = load_dataset("mnist", root=root)
    x, y = (t.to(device) for t in class_slice(data.train_x, data.train_y, 10))
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    model = create_model("convnet", in_channels=1, num_classes=10, image_size=28,
                         width=budget["width"])  # the structure; weights go to the device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    got = train_protocol(model, x, y, test_x, test_y, epochs=budget["epochs"])
    floor_s = got["gflop"] / rate
    print(f"eval train: convnet width {budget['width']}, 10/class, {budget['epochs']} epochs, "
          f"{test_x.shape[0]} test images: {got['measured_s']:.3f} s/net, peak GPU memory "
          f"{peak_gpu(device)}, floor {floor_s:.4f} s, {got['measured_s'] / floor_s:.1f}x floor",
          flush=True)

    # The same nets trained together (vmap) and one by one.
    n = budget["nets"]
    inits = [{k: v.to(device)
              for k, v in init_params(model, "default", derive_seed(0, "eval", j)).items()}
             for j in range(n)]
    train = dict(lr=0.01, epochs=budget["vmap_epochs"], seeds=list(range(n)))
    one = train_protocol(model, x, y, test_x, test_y, epochs=budget["vmap_epochs"],
                         measure=False)
    floor_n = n * one["gflop"] / rate
    times, accs = {}, {}
    for path, batched in (("vmap", True), ("loop", False)):
        sync()
        start = time.perf_counter()
        accs[path] = train_accuracies(model, inits, x, y, test_x, test_y, batched=batched,
                                      **train)
        sync()
        times[path] = time.perf_counter() - start
    diff = float((accs["vmap"] - accs["loop"]).abs().max())
    print(f"vmap batching: {n} nets, {budget['vmap_epochs']} epochs: vmap {times['vmap']:.3f} s, "
          f"loop {times['loop']:.3f} s ({times['loop'] / times['vmap']:.2f}x), floor "
          f"{floor_n:.4f} s (vmap {times['vmap'] / floor_n:.1f}x, loop "
          f"{times['loop'] / floor_n:.1f}x), accuracies differ by at most {diff:.3f}", flush=True)
    if diff > 0.1:  # a few flipped test images is rounding; a tenth of the test set is a bug
        raise SystemExit(f"vmap and loop accuracies differ by {diff:.3f}")


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def dd_eval(bundle: Path, protocol: str, budget: dict, device: str, root: Path,
            flags: list[str] = ()) -> tuple[dict, float]:
    """`dd eval` in a fresh process: (its first row, wall seconds)."""
    cmd = [sys.executable, "-m", "ddcli", "eval", str(bundle), "--protocol", protocol,
           "--n-nets", str(budget["cli_nets"]), "--train-epochs", str(budget["epochs"]),
           "--device", device, "--data-root", str(root), "--json", "--quiet", *flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dd eval {' '.join(flags)} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(done.stdout)["rows"][0], took


def cli_step(bundle: Path, budget: dict, device: str, root: Path) -> None:
    row, took = dd_eval(bundle, "train", budget, device, root)
    print(f"eval cli: dd eval --protocol train, {budget['cli_nets']} nets, {budget['epochs']} "
          f"epochs: accuracy {row['mean']:.4f} +- {row['std']:.4f}, {took:.1f} s (exit 0)",
          flush=True)


def levers_step(bundle: Path, budget: dict, device: str, root: Path) -> None:
    """The DSA protocol in fp32 and with the speed levers, the same nets: both times and
    how far the mean accuracies differ (bf16 rounding, not a different result)."""
    fp32, t_fp32 = dd_eval(bundle, "dsa", budget, device, root)
    fast, t_fast = dd_eval(bundle, "dsa", budget, device, root, budget["levers"])
    print(f"eval levers: dd eval --protocol dsa {' '.join(budget['levers'])}, "
          f"{budget['cli_nets']} nets, {budget['epochs']} epochs: {t_fast:.1f} s, fp32 "
          f"{t_fp32:.1f} s ({t_fp32 / t_fast:.2f}x), accuracy {fast['mean']:.4f} vs fp32 "
          f"{fp32['mean']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="holds MNIST and CIFAR-10 (default: stand-ins in a temp folder)")
    args = ap.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device} but torch sees no CUDA device "
                         "(torch.cuda.is_available() is False)")
    budget = BUDGETS["cuda" if device.startswith("cuda") else "cpu"]
    started = time.perf_counter()
    threads = torch.get_num_threads()
    rate = gemm_gflops(budget["gemm"], threads, torch.float32, 3, device=device)
    name = (torch.cuda.get_device_name(device) if device.startswith("cuda")
            else f"{cpu_info()['cpu']}, {threads} thread(s)")
    print(f"gpu_check device: {device} ({name}), torch {torch.__version__}, sgemm "
          f"{budget['gemm']}^2 {rate:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root or stand_in_data(Path(tmp) / "data")
        print(f"gpu_check data: {root}{'' if args.data_root else ' (stand-ins)'}", flush=True)
        bundle = Path(tmp) / "mnist.safetensors"
        distill_step("mnist", "paper-mnist-fixed", budget, device, rate, root, bundle)
        distill_step("cifar10", "paper-cifar10-fixed", budget, device, rate, root,
                     Path(tmp) / "cifar10.safetensors")
        distill_step("dm cifar10", "dm-cifar10-ipc10", budget, device, rate, root,
                     Path(tmp) / "dm-cifar10.safetensors")
        eval_step(budget, device, rate, root)
        cli_step(bundle, budget, device, root)
        levers_step(bundle, budget, device, root)
    print(f"gpu_check: all steps passed in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
