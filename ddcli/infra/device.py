"""Devices: choosing one, moving tensors without host syncs, and the CPU allocator.

Host syncs. On CUDA (and MPS) the host queues kernels and runs ahead of the device;
anything that reads a value back (``.item()``, ``.tolist()``, a truth test, a copy from
pageable memory) makes it wait. The engine therefore reads its per-iteration numbers
(loss, finiteness, rate statistics) in batches every ``sync_interval`` iterations, and
moves host tensors through pinned memory with ``non_blocking=True``.

The CPU allocator. One outer iteration allocates and frees the same few large blocks
(activations of the real batch: 19 MB each for LeNet at batch 1024) every time. glibc
returns blocks above its mmap threshold to the kernel on free, so every iteration pays
for page faults on tens of thousands of fresh pages (docs/performance.md, "The hot
path", has the cost). ``retain_freed_memory`` keeps freed blocks in the heap for reuse
while the loop runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

import torch
from ddcli.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# What glibc's dynamic thresholds grow to once large blocks have been freed: restored
# after the loop so later code in the process behaves as it would have anyway.
_RESTORE_MMAP, _RESTORE_TRIM = 32 << 20, 64 << 20


def resolve_device(name: str, *, local_rank: int | None = None) -> torch.device:
    """The device for ``--device``: auto, cpu, cuda, cuda:N or mps.

    ``auto`` is CUDA when a GPU is visible, then MPS, then the CPU. Under several
    processes (``local_rank`` given) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but no CUDA GPU is available here; "
                              "use --device cpu or auto")
        if local_rank is not None:
            if device.index is not None:
                raise ConfigError(f"--device {name}: with several processes each one takes "
                                  "cuda:LOCAL_RANK; pass --device cuda or auto")
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device mps asked for, but MPS is not available here")
    return device


def sync_interval(device: torch.device, log_every: int) -> int:
    """How many iterations the engine runs between reads of device values.

    The CPU has nothing to wait for, so it checks every iteration (and a NaN stops the
    run before the optimizer steps on it). Elsewhere values are read at the logging
    interval, or every 10 iterations when logging is off.
    """
    if device.type == "cpu":
        return 1
    return max(1, log_every or 10)


# Floats of layer outputs in one inner step (all its images) up to which one network's
# unroll is "small" on the CPU: one thread, and ATen's convolutions rather than oneDNN's
# (1 MiB of float32; LeNet's MNIST step is about 0.15M, AlexCifarNet's CIFAR-10 one 2.2M).
SMALL_STEP_FLOATS = 2**18


def inner_threads(device: torch.device, step_floats: int = 0) -> int | None:
    """Intra-op threads for one network's unroll on ``device`` (None: torch's setting).

    ``step_floats``: what one inner step's layers output (see ``unroll_onednn``). On the
    CPU a small step (LeNet on the 10 images of an MNIST step) makes every op tiny: a
    parallel region gains little, and if any other process takes a core for a moment,
    every region waits for the descheduled thread. Such an unroll runs on one thread;
    a step larger than ``SMALL_STEP_FLOATS`` (AlexCifarNet, ConvNet) keeps all threads,
    whose regions are long enough to pay. Measurements in docs/performance.md.
    ``DDCLI_UNROLL_THREADS=N`` overrides it (0: torch's setting throughout).
    """
    if device.type != "cpu":
        return None
    forced = os.environ.get("DDCLI_UNROLL_THREADS")
    if forced is not None:
        return int(forced) if int(forced) > 0 else None
    return 1 if step_floats <= SMALL_STEP_FLOATS else None


def unroll_onednn(device: torch.device, step_floats: int) -> bool | None:
    """Whether one network's unroll uses oneDNN's convolutions: False turns them off for
    it, None leaves torch's setting (``ddcli.core.meta_gradient.NetsMetaGradient``).

    ``step_floats`` is what one inner step's layers output (the images of a step times
    ``ddcli.core.metrics.activation_floats``). For steps this small (LeNet on the 10
    images of an MNIST step) oneDNN's fixed cost per call dominates, its input-gradient
    kernel above all, which the double backward of every step calls; ATen's
    im2col-and-GEMM convolutions do the same arithmetic in less time. Wider steps
    (AlexCifarNet, ConvNet, or more images per step) are faster on oneDNN, and so is
    the outer loss on the real batch, which keeps torch's setting. docs/performance.md
    has the measurements. ``DDCLI_UNROLL_ONEDNN=1`` keeps oneDNN for every unroll, ``0``
    turns it off for every unroll.
    """
    if device.type != "cpu":
        return None
    forced = os.environ.get("DDCLI_UNROLL_ONEDNN")
    if forced is not None:
        return None if forced == "1" else False
    return False if step_floats <= SMALL_STEP_FLOATS else None


def real_batch_nhwc(device: torch.device) -> bool:
    """Whether the outer loss gets its real batch channels-last (NHWC), and DM both of
    its sides: on the CPU, oneDNN's NHWC convolutions and pooling are the faster ones
    for large batches (docs/performance.md). Not measured on GPUs, so left as it is
    there. ``DDCLI_REAL_NHWC=1`` or ``0`` forces it on or off (for benchmarks)."""
    forced = os.environ.get("DDCLI_REAL_NHWC")
    if forced is not None:
        return forced == "1"
    return device.type == "cpu"


def to_device(value, device: torch.device):
    """A tensor, or a dict of them, on ``device``; host-to-CUDA copies don't block."""
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if value.device == device:
        return value
    if device.type == "cuda" and value.device.type == "cpu":
        # A copy from pageable memory synchronises the stream; from pinned it doesn't.
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device)


def _libc():
    if os.environ.get("DDCLI_MALLOC_TUNING", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return None


@contextlib.contextmanager
def retain_freed_memory(device: torch.device) -> Iterator[None]:
    """While the loop runs on the CPU, keep freed blocks in glibc's heap for reuse.

    No-op off glibc, for other devices, or with ``DDCLI_MALLOC_TUNING=0``.
    """
    libc = _libc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _RESTORE_MMAP)
        libc.mallopt(_M_TRIM_THRESHOLD, _RESTORE_TRIM)
        libc.malloc_trim(0)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (the CPU: the kernel's MemAvailable);
    None where it can't be told (MPS, a system without /proc)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
