"""Readers for the on-disk formats of the named datasets, returning uint8 `(N, C, H, W)` arrays.

These read the files directly instead of going through torchvision's dataset
classes: those verify MD5 sums (so they reject any subset or generated test
file) and decode image by image, which is slow for a whole split.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ddcli.errors import DDError, DatasetNotFoundError

_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (MNIST layout), plain or gzipped, as an array of its shape."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise _unreadable(path, "IDX", str(exc)) from None
    # Header: two zero bytes, a type code, the number of dims, then each dim as a
    # big-endian uint32 (http://yann.lecun.com/exdb/mnist/).
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != _IDX_UBYTE:
        raise _unreadable(path, "IDX", "bad magic number")
    ndim = buf[3]
    offset = 4 + 4 * ndim
    if len(buf) < offset:
        raise _unreadable(path, "IDX", "truncated header")
    dims = struct.unpack(f">{ndim}I", buf[4:offset])
    data = np.frombuffer(buf, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise _unreadable(path, "IDX", f"{data.size} bytes of data for shape {dims}")
    return data.reshape(dims)


def read_idx_split(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """IDX images `(N, rows, cols)` and labels `(N,)` -> `(N, 1, rows, cols)`, `(N,)`."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise _unreadable(images, "IDX", f"images {x.shape} don't match labels {y.shape} in {labels.name}")
    return x[:, None], y


def read_cifar(
    folder: Path, batches: list[str], label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR python batches -> images `(N, 3, 32, 32)` and labels `(N,)`, batches concatenated."""
    xs, ys = [], []
    for batch in batches:
        entry = read_pickle(folder / batch)
        try:
            # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise _unreadable(folder / batch, "CIFAR batch", f"{type(exc).__name__}: {exc}") from None
        if len(x) != len(y):
            raise _unreadable(folder / batch, "CIFAR batch", f"{len(x)} images but {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar_names(path: Path, key: str) -> list[str]:
    """Class names from a CIFAR `batches.meta` / `meta` file."""
    try:
        return [_text(n) for n in read_pickle(path)[key]]
    except (KeyError, TypeError) as exc:
        raise _unreadable(path, "CIFAR meta", f"no {exc} list") from None


def read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python-version file, with byte-string keys decoded.

    The CIFAR "python version" format *is* a Python 2 pickle, so loading one can
    run code: only point the data root at files you trust.
    """
    try:
        with path.open("rb") as f:
            # latin1 maps every Python 2 byte string to text losslessly (the
            # numpy arrays inside are byte strings too).
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # unpickling can raise almost anything on a bad file
        raise _unreadable(path, "CIFAR pickle", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(entry, dict):
        raise _unreadable(path, "CIFAR pickle", f"holds a {type(entry).__name__}, not a dict")
    return {_text(k): v for k, v in entry.items()}


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN cropped-digits `.mat` file -> images `(N, 3, 32, 32)` and labels `(N,)` in 0..9."""
    try:
        from scipy.io import loadmat  # only SVHN needs scipy, so it's imported on demand
    except ImportError:
        raise DDError("reading SVHN's .mat files needs scipy: pip install scipy") from None
    try:
        mat = loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as exc:  # scipy raises ValueError, KeyError, TypeError... on bad files
        raise _unreadable(path, "SVHN .mat", f"{type(exc).__name__}: {exc}") from None
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.size:
        raise _unreadable(path, "SVHN .mat", f"X has shape {x.shape} and y {y.shape}")
    # X is MATLAB's (H, W, C, N); the digit "0" is stored as label 10.
    images = np.transpose(x, (3, 2, 0, 1)).astype(np.uint8, copy=False)
    return images, y.reshape(-1).astype(np.int64) % 10


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _unreadable(path: Path, kind: str, why: str) -> DatasetNotFoundError:
    why = " ".join(why.split())[:200]
    return DatasetNotFoundError(
        f"{path} is not a readable {kind} file ({why}); delete it to download it again, "
        "or pass --data-root DIR (or set DDCLI_DATA_ROOT) to a folder with intact files"
    )
