"""How a result was made, beyond its config: versions, command, code, machine, data.

A rerun that differs can then be explained: ``collect`` records the torch, torchvision
and ddcli versions, the command line and preset, ddcli's git commit when it runs from
a checkout, the date, the device and thread count, and a hash of the data the run saw.
Where the data was is left out (a `--data-root` value in the command too): it names a
folder of one machine, and the hash says which data it was. ``differences`` compares a stored record with this process.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ddcli._version import __version__

_PACKAGE = Path(__file__).resolve().parent.parent


def data_sha256(data) -> str:
    """A short hash of the loaded data (images and labels of both splits, as tensors):
    the same files read the same way give the same hash, whatever their format."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (an exported bundle's, an
    ``--init-from`` bundle's)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    """ddcli's commit (with "+dirty" for uncommitted changes) when it runs from a git
    checkout; None when installed from a wheel."""
    root = _PACKAGE.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "ddcli"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    import torchvision

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"ddcli": str(__version__), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def collect(*, device: str, data=None, preset: str | None = None,
            argv: list[str] | None = None) -> dict[str, Any]:
    """This process's provenance record (JSON-ready)."""
    record: dict[str, Any] = {
        "versions": versions(),
        "command": portable_command(sys.argv if argv is None else argv),
        "preset": preset,
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
    }
    if data is not None:
        record["data"] = {"name": data.name, "sha256": data_sha256(data),
                          "train": int(data.train_y.shape[0]),
                          "test": int(data.test_y.shape[0])}
    return record


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else ``platform.processor()``: what
    decides which kernels, and so which roundings, a run on the CPU gets."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version_lines(then: dict[str, str] | None, now: dict[str, str] | None,
                   names: tuple[str, ...], when: str) -> list[str]:
    """One line per package of ``names`` whose recorded version ``then`` differs from ``now``."""
    then, now = then or {}, now or {}
    return [f"{name} {now.get(name)} here, {then[name]} {when}"
            for name in names if then.get(name) and now.get(name) != then[name]]


def resume_differences(first: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Why a resumed run may not continue bit for bit: what differs between the record of
    the process that started it (``first``) and this one's (``now``): versions, the data,
    the CPU model and the content of the pool it draws from."""
    if not first:
        return []
    out = _version_lines(first.get("versions"), now.get("versions"), ("ddcli", "torch"),
                         "when the run started")
    then, here = (first.get("data") or {}).get("sha256"), (now.get("data") or {}).get("sha256")
    if then and here and then != here:
        out.append("the data here differs from the data the run started on (another copy "
                   "or version of the files)")
    then, here = first.get("cpu"), now.get("cpu")
    if then and here and then != here and now.get("device", "cpu") == "cpu":
        out.append(f"the run started on {then}, this is {here}: another CPU rounds some "
                   "kernels differently, so the iterations from here are not bit for bit "
                   "what the first machine would have computed")
    then, here = first.get("pool_hash"), now.get("pool_hash")
    if then and here and then != here:
        out.append(f"the pool's nets differ from those the run started with (content hash "
                   f"{here}, then {then}): the iterations from here draw other weights")
    return out


def portable_command(argv: list[str]) -> list[str]:
    """``argv`` with each ``--data-root`` value replaced by ``DIR``: a machine's folder."""
    out, hide = [], False
    for arg in map(str, argv):
        if hide:
            out.append("DIR")
        elif arg.startswith("--data-root="):
            out.append("--data-root=DIR")
        else:
            out.append(arg)
        hide = arg == "--data-root"
    return out


def differences(stored: dict[str, Any] | None, data=None) -> list[str]:
    """What differs between a stored record and this process: versions and data."""
    if not stored:
        return []
    out = _version_lines(stored.get("versions"), versions(), ("ddcli", "torch", "torchvision"),
                         "when the bundle was made")
    was = (stored.get("data") or {}).get("sha256")
    if data is not None and was and data_sha256(data) != was:
        out.append(f"the {data.name} data here differs from the data the bundle was made "
                   "with (another copy or version of the files)")
    return out
