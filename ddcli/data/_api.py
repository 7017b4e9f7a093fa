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

# The model of datasets registered without one, and of folder:PATH sets.
DEFAULT_MODEL = "convnet"


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset looks like and where its files are, known without reading them.

    `dd data` lists it; `default_model` is the model `dd distill`, `dd eval` and
    `dd pretrain` use when `--model` isn't given.

    Attributes:
        name: The registry name.
        in_channels: Image channels.
        image_size: Height (= width) of the images, in pixels.
        num_classes: Number of classes.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        folders: Where the files are looked for, in order: relative to the data root
            (`"MNIST/raw"`; `"."` is the root itself) or absolute. Downloads go to the first.
        files: Every file the set needs, each as the names it may have on disk, e.g.
            `("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")`.
        default_model: The model its paper distils it with.
        torchvision: The `torchvision.datasets` class that downloads it, if any.
        note: Another way to get the files (a distribution package), said by `dd data`.
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folders: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]
    default_model: str = DEFAULT_MODEL
    torchvision: str = ""
    note: str = ""

    def search_folders(self, root: Path) -> list[Path]:
        """`folders` as paths, relative ones under the data root `root`."""
        return [Path(f) if Path(f).is_absolute() else root / f for f in self.folders]


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


def default_model(dataset: str) -> str:
    """The model used for `dataset` when none is named: its `DatasetInfo.default_model`,
    `DEFAULT_MODEL` for a set registered without one or not registered (`folder:PATH`)."""
    info = _INFO.get(str(dataset).strip().lower())
    return info.default_model if info is not None else DEFAULT_MODEL


def data_root_source(root: str | os.PathLike[str] | None = None) -> str:
    """Which rule of `resolve_data_root` picks the data root: `"--data-root"`,
    `"$DDCLI_DATA_ROOT"` or `"the default cache"`."""
    if root is not None and str(root) != "":
        return "--data-root"
    if os.environ.get(DATA_ROOT_ENV):
        return f"${DATA_ROOT_ENV}"
    return "the default cache"


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
        name: A name from `list_datasets()` (case-insensitive), or `folder:PATH` for an ImageFolder
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
