"""Atomic file writes: a temporary file in the same folder, fsync, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A crash or kill at any moment leaves either the old file or the new one, never a
    half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> None:
    """Raise OutputError unless ``path`` (a file, or a ``folder``) can be written: its
    nearest existing ancestor must be a writable folder, and the path itself, if it
    exists, must be of the right kind and writable. Checked before long work starts."""
    from ddcli.errors import OutputError

    path = Path(path).absolute()
    if path.exists():
        if folder != path.is_dir():
            kind = "a folder" if path.is_dir() else "a file"
            raise OutputError(f"can't write {what} to {path}: it is {kind}")
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise OutputError(f"can't write {what} to {path}: permission denied")
        if folder:
            return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"can't write {what} to {path}: {parent} is not a writable folder")


def user_cache_dir(name: str, *, env: str | None = None,
                   override: str | os.PathLike | None = None) -> Path:
    """ddcli's cache folder ``name``: ``override``, else ``$env``, else
    ``$XDG_CACHE_HOME/ddcli/<name>`` or ``~/.cache/ddcli/<name>`` (nothing is created)."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "ddcli" / name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomic write through a function that writes to a given path (e.g. PIL's save)."""
    with atomic_path(path) as tmp:
        writer(tmp)
