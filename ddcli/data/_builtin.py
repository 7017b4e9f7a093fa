"""The named datasets, read from torchvision's on-disk layouts under the data root.

Each builder looks for its files, asks torchvision to download them only when
they are missing (and downloading is allowed), then reads them with the fast
readers in `_formats`.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ddcli.data._api import DatasetInfo, register_dataset
from ddcli.data._formats import read_cifar, read_cifar_names, read_idx_split, read_svhn
from ddcli.data._realdata import RealData, labels_tensor, normalized_tensor
from ddcli.errors import DatasetNotFoundError

FIX_HINT = "pass --data-root DIR (or set DDCLI_DATA_ROOT)"

# Debian's dataset-fashion-mnist package installs the gzipped IDX files here.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

DIGITS = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

# Each file as the names it may have (torchvision keeps the .gz next to the extracted
# file; Debian ships only the .gz); the first name is the one the readers ask for.
_IDX_FILES = tuple(
    (base, f"{base}.gz")
    for base in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    )
)  # fmt: skip
_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def _info(name: str, channels: int, size: int, classes: int, folders: tuple[str, ...],
          files: tuple[tuple[str, ...], ...], model: str, torchvision: str,
          note: str = "") -> DatasetInfo:
    mean, std = _STATS[name]
    return DatasetInfo(name, channels, size, classes, mean, std, folders, files,
                       default_model=model, torchvision=torchvision, note=note)


def _single(*names: str) -> tuple[tuple[str, ...], ...]:
    return tuple((n,) for n in names)


MNIST = _info("mnist", 1, 28, 10, ("MNIST/raw",), _IDX_FILES, "lenet", "MNIST")
FASHION_MNIST = _info("fashion-mnist", 1, 28, 10, ("FashionMNIST/raw", str(DEBIAN_FASHION_DIR)),
                      _IDX_FILES, "lenet", "FashionMNIST",
                      note="Debian: apt install dataset-fashion-mnist")
CIFAR10 = _info("cifar10", 3, 32, 10, ("cifar-10-batches-py",),
                _single(*_CIFAR10_BATCHES, "test_batch", "batches.meta"),
                "alexcifarnet", "CIFAR10")
CIFAR100 = _info("cifar100", 3, 32, 100, ("cifar-100-python",),
                 _single("train", "test", "meta"), "alexcifarnet", "CIFAR100")
SVHN = _info("svhn", 3, 32, 10, (".",), _single("train_32x32.mat", "test_32x32.mat"),
             "alexcifarnet", "SVHN")


@register_dataset("mnist", info=MNIST)
def _build_mnist(*, root: Path, download: bool) -> RealData:
    files = _require_files(MNIST, root, download, fetch=lambda: torchvision_download("MNIST", root))
    return _from_idx("mnist", files, DIGITS)


@register_dataset("fashion-mnist", info=FASHION_MNIST)
def _build_fashion_mnist(*, root: Path, download: bool) -> RealData:
    files = _require_files(FASHION_MNIST, root, download,
                           fetch=lambda: torchvision_download("FashionMNIST", root))
    return _from_idx("fashion-mnist", files, FASHION_CLASSES)


@register_dataset("cifar10", info=CIFAR10)
def _build_cifar10(*, root: Path, download: bool) -> RealData:
    _require_files(CIFAR10, root, download, fetch=lambda: torchvision_download("CIFAR10", root))
    folder = root / "cifar-10-batches-py"
    train = read_cifar(folder, _CIFAR10_BATCHES, "labels")
    test = read_cifar(folder, ["test_batch"], "labels")
    classes = read_cifar_names(folder / "batches.meta", "label_names")
    return _assemble("cifar10", train, test, classes)


@register_dataset("cifar100", info=CIFAR100)
def _build_cifar100(*, root: Path, download: bool) -> RealData:
    _require_files(CIFAR100, root, download, fetch=lambda: torchvision_download("CIFAR100", root))
    folder = root / "cifar-100-python"
    # The 100 fine labels; the 20 coarse superclasses are not used.
    train = read_cifar(folder, ["train"], "fine_labels")
    test = read_cifar(folder, ["test"], "fine_labels")
    classes = read_cifar_names(folder / "meta", "fine_label_names")
    return _assemble("cifar100", train, test, classes)


@register_dataset("svhn", info=SVHN)
def _build_svhn(*, root: Path, download: bool) -> RealData:
    def fetch() -> None:
        # Only the missing splits: torchvision re-downloads (overwrites) any file
        # whose MD5 differs, which would clobber a user's own subset.
        for split in ("train", "test"):
            if not (root / f"{split}_32x32.mat").is_file():
                torchvision_download("SVHN", root, split=split)

    _require_files(SVHN, root, download, fetch=fetch)
    train = read_svhn(root / "train_32x32.mat")
    test = read_svhn(root / "test_32x32.mat")
    return _assemble("svhn", train, test, DIGITS)


def torchvision_download(dataset: str, root: Path, **kwargs: object) -> None:
    """Download with torchvision's dataset class `dataset` into `root` (its own layout)."""
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    # torchvision prints "Downloading ..." on stdout, which belongs to results.
    with contextlib.redirect_stdout(sys.stderr):
        getattr(torchvision.datasets, dataset)(str(root), download=True, **kwargs)


def _require_files(
    info: DatasetInfo, root: Path, download: bool, *, fetch: Callable[[], None]
) -> dict[str, Path]:
    """Find every file in the first folder that has all of them, downloading into the first
    folder if allowed; keyed by each file's first name."""
    dataset, folders = info.name, info.search_folders(root)
    files = {names[0]: names for names in info.files}
    note = f" ({info.note})" if info.note else ""
    for folder in folders:
        found = find_files(folder, files)
        if len(found) == len(files):
            return found
    hint, created = FIX_HINT, []
    if not download:
        reason = "downloading is off"
    else:
        created = _missing_folders(folders[0])
        try:
            fetch()
        # No network, a proxy, a full disk, a bad checksum: to the user each just
        # means the files are not available, so every failure gets the same message.
        except Exception as exc:
            reason = f"downloading failed: {_reason(exc)}"
            hint = f"retry when online, or {FIX_HINT}"
        else:
            found = find_files(folders[0], files)
            if len(found) == len(files):
                return found
            reason = "downloading did not produce them"
    present = find_files(folders[0], files)
    missing = [display_name(alternatives) for key, alternatives in files.items() if key not in present]
    if created:
        # Leave no empty (or half-filled) folders behind from a failed download; all
        # they hold came from it. Folders that existed before are left alone.
        shutil.rmtree(created[0], ignore_errors=True)
    where = " or ".join(str(f) for f in folders)
    raise DatasetNotFoundError(
        f"{dataset}: {', '.join(missing)} not found in {where}{note} and {reason}; {hint}"
    )


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that don't exist yet, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    return missing[::-1]


def _reason(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type, then what failed and why.

    torchvision's errors span several lines ("Error downloading X:", then "Tried URL,
    got:" and the error, once per mirror): the first line says what failed and the
    last one why, so longer messages keep those two.
    """
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines if len(lines) <= 2 else [lines[0], lines[-1]])
    if len(text) > limit:  # still too long for a line: end at a word, and say so
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def find_files(folder: Path, files: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """The files of ``files`` (key: its names) that ``folder`` holds, by key."""
    found = {}
    for key, alternatives in files.items():
        path = next((folder / a for a in alternatives if (folder / a).is_file()), None)
        if path is not None:
            found[key] = path
    return found


def display_name(alternatives: tuple[str, ...]) -> str:
    first, *others = alternatives
    return first + "".join(f"[{o[len(first):]}]" if o.startswith(first) else f"|{o}" for o in others)


def _from_idx(name: str, files: dict[str, Path], classes: list[str]) -> RealData:
    train = read_idx_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    test = read_idx_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    return _assemble(name, train, test, classes)


def _assemble(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: list[str],
) -> RealData:
    mean, std = _STATS[name]
    return RealData(
        name=name,
        train_x=normalized_tensor(train[0], mean, std),
        train_y=labels_tensor(train[1]),
        test_x=normalized_tensor(test[0], mean, std),
        test_y=labels_tensor(test[1]),
        classes=classes,
        mean=mean,
        std=std,
    )
