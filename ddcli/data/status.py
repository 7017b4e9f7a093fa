"""Where each registered dataset is looked for and whether its files are there: `dd data`.

`dataset_status(name)` finds a dataset's files without reading them; with
`check=True` it also loads the set, which reads every file as training would (the
readers check each file's header and size), so a truncated or foreign file shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ddcli.data._api import (
    DatasetInfo,
    data_root_source,
    dataset_info,
    list_datasets,
    load_dataset,
    resolve_data_root,
)
from ddcli.data._builtin import display_name, find_files
from ddcli.errors import DDError


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset's files under a data root.

    Attributes:
        info: The dataset's registry metadata.
        looked_in: The folders searched, in order.
        found: The first folder holding every file, or None.
        missing: The files not in the first folder (names as `dd data` shows them),
            when no folder has them all.
        checked: Whether the set was loaded to check its files.
        error: Why loading failed, when it was checked and failed.
        sizes: Training and test images, when it was checked and loaded.
    """

    info: DatasetInfo
    looked_in: tuple[Path, ...]
    found: Path | None
    missing: tuple[str, ...]
    checked: bool = False
    error: str | None = None
    sizes: tuple[int, int] | None = None

    @property
    def state(self) -> str:
        """`"ok"` (loaded), `"present"` (files there, not checked), `"invalid"` or `"missing"`."""
        if self.found is None:
            return "missing"
        if self.error is not None:
            return "invalid"
        return "ok" if self.checked else "present"

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "present")

    def offline_hint(self) -> str:
        """How to put the files in place without ddcli downloading them."""
        files = ", ".join(display_name(names) for names in self.info.files)
        hint = f"copy {files} into {self.looked_in[0]}"
        if self.info.torchvision:
            hint += (f" (torchvision.datasets.{self.info.torchvision}(DIR, download=True) "
                     "on a machine online writes them under DIR)")
        return hint + (f"; or {self.info.note}" if self.info.note else "")


def dataset_status(name: str, *, root: str | os.PathLike[str] | None = None,
                   check: bool = False) -> DatasetStatus:
    """Where dataset `name`'s files are looked for and which are there.

    Args:
        name: A name from `list_datasets()`.
        root: The data root (`resolve_data_root` gives the default).
        check: Also load the set (without downloading) to check that its files are valid.

    Raises:
        UnknownDatasetError: `name` is not registered.

    Example:
        >>> dataset_status("mnist", root="tests/fixtures").state
        'present'
    """
    info = dataset_info(name)
    if info is None:
        raise ValueError(f"dataset {name!r} was registered without a DatasetInfo")
    data_root = resolve_data_root(root)
    folders = tuple(info.search_folders(data_root))
    files = {names[0]: names for names in info.files}
    found = next((f for f in folders if len(find_files(f, files)) == len(files)), None)
    if found is None:
        present = find_files(folders[0], files)
        missing = tuple(display_name(n) for k, n in files.items() if k not in present)
        return DatasetStatus(info, folders, None, missing)
    if not check:
        return DatasetStatus(info, folders, found, ())
    try:
        data = load_dataset(info.name, root=data_root, download=False)
    except DDError as exc:
        return DatasetStatus(info, folders, found, (), checked=True, error=str(exc))
    return DatasetStatus(info, folders, found, (), checked=True,
                         sizes=(len(data.train_y), len(data.test_y)))


def data_root_report(root: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data root and the rule that chose it (`data_root_source`)."""
    return resolve_data_root(root), data_root_source(root)


__all__ = ["DatasetStatus", "data_root_report", "dataset_status"]
