"""Dataset registry tests: tiny fakes written in each on-disk format, plus the committed MNIST subset."""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddcli.data._api as data_api
import ddcli.data._builtin as builtin
from ddcli.infra.registry import Registry
from ddcli.data import (
    RealData,
    dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
)
from ddcli.errors import ConfigError, DatasetNotFoundError, UnknownDatasetError

FIXTURES = Path(__file__).parent / "fixtures"

# The published constants, typed out independently of the library's table.
EXPECTED_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


# --- writers for each on-disk format; each returns what a loader must give back ---


def _pixels(rng, n, c, size):
    return rng.integers(0, 256, size=(n, c, size, size), dtype=np.uint8)  # (N, C, H, W)


def _write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _fake_idx(raw: Path, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, n in (("train", 20), ("t10k", 10)):
        x, y = _pixels(rng, n, 1, 28), np.arange(n, dtype=np.uint8) % 10
        _write_idx(raw / f"{split}-images-idx3-ubyte", x[:, 0], gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y, gz)
        expected["train" if split == "train" else "test"] = (x, y)
    return expected


def _fake_mnist(root: Path) -> dict:
    return {**_fake_idx(root / "MNIST" / "raw"), "classes": [str(d) for d in range(10)]}


def _fake_fashion(root: Path) -> dict:
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    classes += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return {**_fake_idx(root / "FashionMNIST" / "raw"), "classes": classes}


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _fake_cifar10(root: Path) -> dict:
    rng, folder = np.random.default_rng(1), root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _pixels(rng, 3, 3, 32), [(3 * i + j) % 10 for j in range(3)]
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": x.reshape(3, -1), "labels": y})
        xs.append(x)
        ys += y
    test_x = _pixels(rng, 4, 3, 32)
    _pickle(folder / "test_batch", {"data": test_x.reshape(4, -1), "labels": [9, 0, 1, 2]})
    _pickle(folder / "batches.meta", {"label_names": classes, "num_vis": 3072})
    return {"train": (np.concatenate(xs), np.array(ys)), "test": (test_x, np.array([9, 0, 1, 2])), "classes": classes}


def _fake_cifar100(root: Path) -> dict:
    # Byte-string keys and names, as Python 2 pickles may decode to.
    rng, folder = np.random.default_rng(2), root / "cifar-100-python"
    folder.mkdir(parents=True)
    classes = [f"class_{i:02d}" for i in range(100)]
    expected = {"classes": classes}
    for split, n in (("train", 6), ("test", 4)):
        x, fine = _pixels(rng, n, 3, 32), [97 - 7 * j for j in range(n)]
        _pickle(folder / split, {b"data": x.reshape(n, -1), b"fine_labels": fine, b"coarse_labels": [0] * n})
        expected[split] = (x, np.array(fine))
    _pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in classes], b"coarse_label_names": []})
    return expected


def _fake_svhn(root: Path) -> dict:
    savemat = pytest.importorskip("scipy.io").savemat
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    expected = {"classes": [str(d) for d in range(10)]}
    for split, n in (("train", 5), ("test", 3)):
        x, digits = _pixels(rng, n, 3, 32), np.arange(n) % 10
        stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # SVHN writes 0 as 10
        savemat(str(root / f"{split}_32x32.mat"), {"X": x.transpose(2, 3, 1, 0), "y": stored})
        expected[split] = (x, digits)
    return expected


FAKES = {
    "mnist": _fake_mnist,
    "fashion-mnist": _fake_fashion,
    "cifar10": _fake_cifar10,
    "cifar100": _fake_cifar100,
    "svhn": _fake_svhn,
}


def _assert_matches(data: RealData, expected: dict) -> None:
    for split in ("train", "test"):
        x = getattr(data, f"{split}_x")
        raw, labels = expected[split]
        assert x.dtype == torch.float32 and x.shape == raw.shape
        assert getattr(data, f"{split}_y").dtype == torch.int64
        assert getattr(data, f"{split}_y").tolist() == [int(v) for v in labels]
        torch.testing.assert_close(data.denormalize(x), torch.from_numpy(raw).float() / 255, rtol=0, atol=1e-6)
    assert data.classes == expected["classes"]


# --- the registry ---


def test_every_registered_dataset_has_a_fake_writer():
    assert {"cifar10", "mnist"} <= set(list_datasets())
    assert set(FAKES) == set(list_datasets()), "every registered dataset needs a fake writer here"


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_loads_its_on_disk_format(name, tmp_path):
    expected = FAKES[name](tmp_path)
    data = load_dataset(name, root=tmp_path, download=False)
    _assert_matches(data, expected)
    assert data.name == name
    assert (data.mean, data.std) == EXPECTED_STATS[name]
    info = dataset_info(name)
    assert (info.in_channels, info.image_size, info.num_classes) == (
        data.in_channels,
        data.image_size,
        data.num_classes,
    )
    assert (info.mean, info.std) == EXPECTED_STATS[name]


def test_uncompressed_idx_files_and_case_insensitive_names(tmp_path):
    expected = {**_fake_idx(tmp_path / "MNIST" / "raw", gz=False), "classes": [str(d) for d in range(10)]}
    _assert_matches(load_dataset(" MNIST", root=tmp_path, download=False), expected)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mnist")(lambda *, root, download: None)
    assert "mnist" in list_datasets()


def test_registered_builder_gets_root_and_download(tmp_path, monkeypatch):
    monkeypatch.setattr(data_api, "_DATASETS", Registry("dataset"))
    calls = []

    @register_dataset("tiny")
    def _build_tiny(*, root, download):
        calls.append((root, download))
        x = torch.zeros(2, 1, 4, 4)
        return RealData("tiny", x, torch.tensor([0, 1]), x, torch.tensor([1, 0]), ["a", "b"], (0.5,), (0.25,))

    monkeypatch.setenv("DDCLI_OFFLINE", "1")
    assert load_dataset("tiny", root=tmp_path).num_classes == 2
    assert calls == [(tmp_path.absolute(), False)]
    assert list_datasets() == ["tiny"]


def test_unknown_name_lists_the_choices():
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("mnsit")
    message = str(err.value)
    assert all(name in message for name in list_datasets())
    assert "folder:PATH" in message and "did you mean 'mnist'" in message


# --- missing files and downloads ---


def test_missing_files_name_the_file_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "torchvision_download", _must_not_download)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", root=tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "--data-root" in message and "DDCLI_DATA_ROOT" in message


def test_offline_env_turns_the_default_download_off(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "torchvision_download", _must_not_download)
    monkeypatch.setenv("DDCLI_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="test_batch.*downloading is off"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_files_are_downloaded_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DDCLI_OFFLINE", raising=False)
    fetched = {}

    def fake_download(dataset, root, **kwargs):
        fetched[dataset] = root
        fetched["expected"] = _fake_mnist(root)

    monkeypatch.setattr(builtin, "torchvision_download", fake_download)
    data = load_dataset("mnist", root=tmp_path)
    assert fetched["MNIST"] == tmp_path
    _assert_matches(data, fetched["expected"])


def test_failed_download_is_a_one_line_not_found_error(tmp_path, monkeypatch):
    def no_network(dataset, root, **kwargs):
        raise OSError("Name or service\nnot known")

    monkeypatch.setattr(builtin, "torchvision_download", no_network)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("svhn", root=tmp_path, download=True)
    message = str(err.value)
    assert "\n" not in message and "train_32x32.mat" in message
    assert "downloading failed: OSError: Name or service not known" in message


def test_fashion_falls_back_to_the_debian_package_folder(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share"
    folders = ("FashionMNIST/raw", str(debian))  # in place of /usr/share/datasets/fashion-mnist
    monkeypatch.setattr(builtin, "FASHION_MNIST", replace(builtin.FASHION_MNIST, folders=folders))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "root", download=False)
    assert str(debian) in str(err.value) and "dataset-fashion-mnist" in str(err.value)
    expected = {**_fake_idx(debian), "classes": _fake_fashion(tmp_path / "unused")["classes"]}
    _assert_matches(load_dataset("fashion-mnist", root=tmp_path / "root", download=False), expected)


def test_corrupt_idx_file_is_reported_with_its_path(tmp_path):
    _fake_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01garbage"))
    with pytest.raises(DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz is not a readable IDX"):
        load_dataset("mnist", root=tmp_path, download=False)


def _must_not_download(*args, **kwargs):
    raise AssertionError("download attempted")


# --- the data root ---


def test_resolve_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_DATA_ROOT", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("DDCLI_DATA_ROOT")
    assert resolve_data_root() == tmp_path / "xdg" / "ddcli" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "ddcli" / "data"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("rel") == tmp_path / "rel"


# --- the committed real-MNIST subset ---


def test_committed_fixture_is_a_balanced_real_mnist_subset(monkeypatch):
    monkeypatch.setattr(builtin, "torchvision_download", _must_not_download)
    data = load_dataset("mnist", root=FIXTURES, download=False)
    assert data.train_x.shape == (600, 1, 28, 28) and data.test_x.shape == (500, 1, 28, 28)
    assert data.train_y.bincount().tolist() == [60] * 10
    assert data.test_y.bincount().tolist() == [50] * 10
    assert data.classes == [str(d) for d in range(10)]
    # The official first digits (a 5 and a 7) and their ink, so the subset is real MNIST.
    assert (int(data.train_y[0]), int(data.test_y[0])) == (5, 7)
    pixels = (data.denormalize(data.train_x[0]) * 255).round()
    assert int(pixels.sum()) == 27525 and pixels.min() == 0 and pixels.max() == 255
    assert sum(p.stat().st_size for p in (FIXTURES / "MNIST" / "raw").iterdir()) < 500_000


# --- RealData ---


def test_normalize_broadcasts_and_inverts():
    x = torch.zeros(3, 3, 2, 2)
    data = RealData("t", x, torch.zeros(3, dtype=torch.long), x, torch.zeros(3, dtype=torch.long), ["a"],
                    (0.25, 0.5, 0.75), (0.5, 0.25, 0.125))  # fmt: skip
    x01 = torch.rand(4, 5, 3, 2, 2, dtype=torch.float64)  # (steps, k, C, H, W)
    normed = data.normalize(x01)
    assert normed.dtype == torch.float64
    torch.testing.assert_close(normed[..., 2, :, :], (x01[..., 2, :, :] - 0.75) / 0.125)
    torch.testing.assert_close(data.denormalize(normed), x01)
    assert "RealData(name='t', train=3, test=3, image=(3, 2, 2), classes=1)" == repr(data)


def test_realdata_rejects_non_square_images():
    x = torch.zeros(2, 1, 4, 5)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="4x5"):
        RealData("t", x, y, x, y, ["a"], (0.5,), (0.5,))


# --- folder:PATH ---


def _write_folder(top: Path, images: dict[str, dict[str, list[np.ndarray]]], test_name: str = "test"):
    for split, classes in images.items():
        for cls, arrays in classes.items():
            (top / split.replace("test", test_name) / cls).mkdir(parents=True, exist_ok=True)
            for i, array in enumerate(arrays):
                Image.fromarray(array).save(top / split.replace("test", test_name) / cls / f"{i:03d}.png")


def test_folder_rgb_dataset_with_computed_stats(tmp_path):
    rng = np.random.default_rng(4)
    img = lambda: rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # noqa: E731  (H, W, C)
    tree = {"train": {"dog": [img(), img()], "cat": [img()]}, "test": {"cat": [img()], "dog": [img()]}}
    _write_folder(tmp_path, tree)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.name == f"folder:{tmp_path}" and data.classes == ["cat", "dog"]
    assert data.train_y.tolist() == [0, 1, 1] and data.test_y.tolist() == [0, 1]
    raw = np.stack([tree["train"]["cat"][0], *tree["train"]["dog"]]).transpose(0, 3, 1, 2) / 255
    np.testing.assert_allclose(data.mean, raw.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(data.std, raw.std(axis=(0, 2, 3)), atol=1e-9)
    torch.testing.assert_close(data.denormalize(data.train_x), torch.from_numpy(raw).float(), rtol=0, atol=1e-6)


def test_folder_of_grayscale_images_has_one_channel_and_accepts_val(tmp_path):
    gray = np.arange(36, dtype=np.uint8).reshape(6, 6)
    _write_folder(tmp_path, {"train": {"a": [gray], "b": [gray.T]}, "test": {"a": [gray], "b": [gray]}}, "val")
    data = load_dataset(f"folder:{tmp_path}")
    assert (data.in_channels, data.image_size, len(data.test_y)) == (1, 6, 2)
    torch.testing.assert_close(data.denormalize(data.train_x[1]), torch.from_numpy(gray.T[None] / 255).float())
    # One colour image anywhere makes the whole dataset RGB, grays replicated over channels.
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "val" / "b" / "rgb.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.in_channels == 3 and len(data.test_y) == 3
    assert torch.equal(data.train_x[1, 0], data.train_x[1, 2])


def test_folder_errors(tmp_path):
    img = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    _write_folder(tmp_path / "mismatch", {"train": {"a": [img], "b": [img]}, "test": {"a": [img], "c": [img]}})
    with pytest.raises(ConfigError, match="only in train: b; only in test: c"):
        load_dataset(f"folder:{tmp_path / 'mismatch'}")
    _write_folder(tmp_path / "sizes", {"train": {"a": [img, np.zeros((5, 5), np.uint8)]}, "test": {"a": [img]}})
    with pytest.raises(ConfigError, match="one size"):
        load_dataset(f"folder:{tmp_path / 'sizes'}")
    _write_folder(tmp_path / "wide", {"train": {"a": [np.zeros((4, 6), np.uint8)]}, "test": {"a": [img]}})
    with pytest.raises(ConfigError, match="square"):
        load_dataset(f"folder:{tmp_path / 'wide'}")
    (tmp_path / "nosplit" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="train/ and test/"):
        load_dataset(f"folder:{tmp_path / 'nosplit'}")


def test_the_default_model_is_the_dataset_infos():
    from ddcli import DistillConfig
    from ddcli.data import DEFAULT_MODEL, default_model

    for name in list_datasets():
        assert default_model(name) == dataset_info(name).default_model
    assert default_model(" MNIST") == "lenet"
    assert default_model("folder:some/where") == default_model("toy") == DEFAULT_MODEL
    assert DistillConfig().model_name("cifar10") == "alexcifarnet"
