"""A failed download: one complete line (reason, then what to do), no folders left."""

import pytest

from ddcli.data import _builtin as builtin
from ddcli.data import load_dataset
from ddcli.errors import DatasetNotFoundError

# What torchvision raises when no mirror can be reached (torchvision.datasets.MNIST).
TORCHVISION_ERROR = (
    "Error downloading train-images-idx3-ubyte.gz:\n"
    "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n"
    "Tried http://yann.lecun.com/exdb/mnist/, got:\n"
    "<urlopen error [Errno -2] Name or service not known>\n")


def _offline_torchvision(dataset, root, **kwargs):
    (root / dataset / "raw").mkdir(parents=True, exist_ok=True)  # as torchvision does
    raise RuntimeError(TORCHVISION_ERROR)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("DDCLI_OFFLINE", raising=False)
    monkeypatch.setattr(builtin, "torchvision_download", _offline_torchvision)


def test_the_message_is_one_complete_line(tmp_path, online):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=tmp_path / "data")
    message = str(err.value)
    assert "\n" not in message
    assert ("downloading failed: RuntimeError: Error downloading train-images-idx3-ubyte.gz: "
            "<urlopen error [Errno -2] Name or service not known>;") in message
    # the reason, then what to do, whole
    assert message.endswith("; retry when online, or pass --data-root DIR (or set "
                            "DDCLI_DATA_ROOT)")


def test_the_folders_made_for_a_failed_download_are_removed(tmp_path, online):
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", root=tmp_path / "cache" / "data")
    assert list(tmp_path.iterdir()) == []  # cache/, data/, MNIST/, raw/: all were ours


def test_folders_that_existed_are_kept(tmp_path, online):
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", root=tmp_path)
    assert sorted(p.name for p in (tmp_path / "MNIST").iterdir()) == ["notes.txt"]  # raw/ gone


def test_a_very_long_reason_ends_at_a_word(tmp_path, monkeypatch):
    monkeypatch.delenv("DDCLI_OFFLINE", raising=False)

    def verbose(dataset, root, **kwargs):
        raise OSError("disk " * 200)

    monkeypatch.setattr(builtin, "torchvision_download", verbose)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert "OSError: disk disk" in message and "disk ...;" in message
    assert message.count("disk") < 70  # cut to about 300 characters
