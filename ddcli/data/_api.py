"""The dataset registry: `register_dataset`, `load_dataset`, `list_datasets`, `resolve_data_root`."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ddcli.infra.io import user_cache_dir
from ddcli.infra.registry import Registry
from ddcli.data._realdata import RealData
from ddcli.errors import UnknownDatasetError

DatasetBuilder = Callable[..., RealData]

FOLDER_PREFIX = "folder:"
DATA_ROOT_ENV = "DDCLI_DATA_ROOT"
OFFLINE_ENV = "DDCLI_OFFLINE"

@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset looks like, known without reading its files.

    Attributes:
        name: The registry name.
        in_channels: Image channels.
        image_size: Height (= width) of the images, in pixels.
        num_classes: Number of classes.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        files: Where the files live under the data root, e.g. `"MNIST/raw/"`.
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: str


_DATASETS: Registry[DatasetBuilder] = Registry("dataset")
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, *, info: DatasetInfo | None = None
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a dataset builder under `name`. Registering a name twice raises `ValueError`.

    A builder takes keyword-only arguments `root` (a `pathlib.Path`, the resolved
    data root) and `download` (a `bool`, whether it may fetch missing files) and
    returns a `RealData`. When its files are missing and can't be fetched it
    should raise `DatasetNotFoundError` naming the files and the folder.

    Args:
        name: Lower-case name, as typed on the command line; not `folder:...`.
        info: Optional metadata that `dataset_info(name)` returns.

    Example:
        ```python
        @register_dataset("tiny")
        def _build_tiny(*, root: Path, download: bool) -> RealData:
            return RealData("tiny", train_x, train_y, test_x, test_y, ["a", "b"], (0.5,), (0.5,))
        ```
    """
    if name != name.lower() or name.startswith(FOLDER_PREFIX):
        raise ValueError(f"dataset names are lower-case and don't start with {FOLDER_PREFIX!r}: {name!r}")
    register = _DATASETS.register(name)

    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        register(builder)
        if info is not None:
            _INFO[name] = info
        return builder

    return decorator


def list_datasets() -> list[str]:
    """The registered dataset names, sorted.

    Besides these, `load_dataset` accepts `folder:PATH` for an ImageFolder tree.
    """
    return _DATASETS.names()


def dataset_info(name: str) -> DatasetInfo | None:
    """Metadata of a registered dataset without loading it; `None` if it was registered without.

    Raises:
        UnknownDatasetError: `name` is not registered (`folder:PATH` has no static metadata).
    """
    key = name.strip().lower()
    if key not in _DATASETS:
        raise UnknownDatasetError(_unknown_dataset_message(name))
    return _INFO.get(key)


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder datasets are read from and downloaded to, as an absolute path.

    The first of these that is set wins:

    1. `root`, the explicit argument (the CLI's `--data-root`);
    2. the environment variable `DDCLI_DATA_ROOT`;
    3. the user cache: `$XDG_CACHE_HOME/ddcli/data`, or `~/.cache/ddcli/data`.

    Nothing is created; downloading creates the folder when it needs it.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser().absolute()
    return user_cache_dir("data", env=DATA_ROOT_ENV).absolute()


def resumed_data_root(recorded: str | None, given: str | None = None) -> str | None:
    """The data root a resumed run reads from (None: ``resolve_data_root``'s rules).

    ``given`` (the resume's ``--data-root``) wins; else the root the run recorded, if
    that folder is here; else this machine's ``$DDCLI_DATA_ROOT`` or user cache. A run
    folder may come from another machine (committed under ``runs/``), where its
    recorded root is a path that doesn't exist on this one.
    """
    if given is not None and str(given) != "":
        return str(given)
    if recorded and Path(recorded).expanduser().is_dir():
        return recorded
    return None


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> RealData:
    """Load a whole dataset into memory, normalised, as a `RealData`.

    Args:
        name: A name from `list_datasets()` (`cifar10`, `cifar100`, `fashion-mnist`,
            `mnist`, `svhn`; case-insensitive), or `folder:PATH` for an ImageFolder
            tree with `train/` and `test/` (or `val/`) subfolders holding one folder
            of square images per class. `PATH` is relative to the working directory
            and `root` does not apply to it.
        root: Data root holding the files in torchvision's on-disk layout, e.g.
            `ROOT/MNIST/raw/train-images-idx3-ubyte.gz`; see `resolve_data_root`
            for the default.
        download: Whether missing files may be downloaded (with torchvision).
            `None` means yes unless the environment sets `DDCLI_OFFLINE=1`.

    Raises:
        UnknownDatasetError: `name` is neither registered nor `folder:PATH`.
        DatasetNotFoundError: The files are missing and could not be downloaded,
            or are unreadable.
        ConfigError: A `folder:` tree is inconsistent (class folders differ between
            splits, images of different or non-square sizes).

    Example:
        >>> data = load_dataset("mnist", root="tests/fixtures", download=False)
        >>> len(data.train_y), len(data.test_y), data.image_size
        (600, 500, 28)
    """
    key = name.strip()
    if key.lower().startswith(FOLDER_PREFIX):
        # Imported here so that reading the named sets never pulls in PIL scanning code.
        from ddcli.data._folder import load_folder

        return load_folder(key[len(FOLDER_PREFIX) :])
    builder = _DATASETS.get(key.lower())
    if builder is None:
        raise UnknownDatasetError(_unknown_dataset_message(name))
    if download is None:
        download = not offline()
    return builder(root=resolve_data_root(root), download=bool(download))


def offline() -> bool:
    """Whether `DDCLI_OFFLINE` forbids downloads (`1`, `true`, `yes` or `on`)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _unknown_dataset_message(name: str) -> str:
    names = list_datasets()
    close = difflib.get_close_matches(str(name).strip().lower(), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown dataset {name!r}; choose one of: {', '.join(names)}, "
        f"or folder:PATH for an ImageFolder tree with train/ and test/{hint}"
    )
