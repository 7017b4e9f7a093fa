"""Dataset registry: whole datasets preloaded as normalised tensors.

`load_dataset(name)` returns a `RealData` holding the complete train and test
splits as `(N, C, H, W)` float32 tensors, normalised per channel. Named sets
(`list_datasets()`, each registered with a `DatasetInfo`: its shape, folders, files and
default model) are read from torchvision's on-disk layout under the data root
(`resolve_data_root`) and downloaded there when missing, unless `DDCLI_OFFLINE=1`.
`ddcli.data.status` says where each is looked for and which files are there
(`dd data`). `folder:PATH` loads any ImageFolder tree with `train/` and `test/` (or
`val/`) subfolders.

Example:
    >>> from ddcli.data import load_dataset, list_datasets
    >>> "mnist" in list_datasets()
    True
    >>> data = load_dataset("mnist", root="tests/fixtures", download=False)
    >>> data
    RealData(name='mnist', train=600, test=500, image=(1, 28, 28), classes=10)

`zca_dataset(data)` returns the same data in ZCA space (`ddcli.data.zca`, kornia's
`ZCAWhitening(eps=0.1)` fitted on the [0, 1] training images); every `RealData` says
which space it is in with `pixel_space_record`.
"""

from __future__ import annotations

from ddcli.data._api import (
    DEFAULT_MODEL,
    DatasetInfo,
    dataset_info,
    default_model,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
    resumed_data_root,
)
from ddcli.data._realdata import RealData, check_pixel_space, normalized_space
from ddcli.data._split import held_out, validation_split

# Imported for its @register_dataset side effect.
from ddcli.data import _builtin  # noqa: E402,F401  isort: skip

# ddcli.data.zca imports kornia; load it only when one of its names is used.
_ZCA_NAMES = ("ZCA", "fit_zca", "zca_dataset", "normalized_dataset", "zca_from_record")


def __getattr__(name: str):
    if name in _ZCA_NAMES:
        from ddcli.data import zca

        return getattr(zca, name)
    raise AttributeError(f"module 'ddcli.data' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "DatasetInfo",
    "RealData",
    "ZCA",
    "check_pixel_space",
    "dataset_info",
    "default_model",
    "fit_zca",
    "held_out",
    "list_datasets",
    "load_dataset",
    "normalized_dataset",
    "normalized_space",
    "register_dataset",
    "resolve_data_root",
    "validation_split",
    "resumed_data_root",
    "zca_dataset",
    "zca_from_record",
]
