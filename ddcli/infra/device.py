"""Devices: choosing one, moving tensors without host syncs, and the CPU allocator.

Host syncs. On CUDA (and MPS) the host queues kernels and runs ahead of the device;
anything that reads a value back (``.item()``, ``.tolist()``, a truth test, a copy from
pageable memory) makes it wait. The engine therefore reads its per-iteration numbers
(loss, finiteness, rate statistics) in batches every ``sync_interval`` iterations, and
moves host tensors through pinned memory with ``non_blocking=True``.

The CPU allocator. One outer iteration allocates and frees the same few large blocks
(activations of the real batch: 19 MB each for LeNet at batch 1024) every time. glibc
returns blocks above its mmap threshold to the kernel on free, so every iteration pays
for page faults on tens of thousands of fresh pages; measured on the 2-core benchmark
machine that was about 30 % of the CPU time of an iteration. ``retain_freed_memory``
keeps freed blocks in the heap for reuse while the loop runs.
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


def inner_threads(device: torch.device) -> int | None:
    """Intra-op threads for the unroll's own work on ``device`` (None: torch's setting).

    On the CPU the inner steps work on n synthetic images (10 for MNIST): every op is
    tiny, a parallel region gains little, and if any other process takes a core for a
    moment, every region waits for the descheduled thread. Measured on 2 cores with one
    other busy process: 2.78 s/iter with 2 threads throughout, 0.14 s/iter with the
    unroll on 1 thread and the real batch on 2. See docs/performance.md.
    ``DDCLI_UNROLL_THREADS=N`` overrides it (0: torch's setting throughout).
    """
    if device.type != "cpu":
        return None
    n = int(os.environ.get("DDCLI_UNROLL_THREADS", "1"))
    return n if n > 0 else None


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
