"""`dd data`: where each dataset is looked for, whether its files are there and valid."""

import json
from dataclasses import replace

import pytest

import ddcli.data._api as data_api
import ddcli.data._builtin as builtin
from ddcli.data import list_datasets
from ddcli.data.status import dataset_status
from tests._cli import one_line_error, run


@pytest.fixture(autouse=True)
def no_debian_folder(monkeypatch, tmp_path):
    # fashion-mnist is also looked for in Debian's package folder; keep this machine's out.
    folders = ("FashionMNIST/raw", str(tmp_path / "no-debian"))
    monkeypatch.setattr(builtin, "FASHION_MNIST", replace(builtin.FASHION_MNIST, folders=folders))
    monkeypatch.setitem(data_api._INFO, "fashion-mnist", builtin.FASHION_MNIST)


def test_lists_every_registered_dataset_with_where_it_is(fixture_root):
    r = run("data", "--data-root", fixture_root)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"data root: {fixture_root.absolute()} (from --data-root)" in out
    for name in list_datasets():
        assert f"\n{name}: " in out
    assert f"present: {fixture_root.absolute() / 'MNIST' / 'raw'}" in out
    assert "mnist: 1x28x28, 10 classes, model lenet" in out
    cifar = out[out.index("\ncifar10: "):out.index("\ncifar100: ")]
    assert "missing: data_batch_1" in cifar
    assert f"looked in: {fixture_root.absolute() / 'cifar-10-batches-py'}" in cifar
    assert "torchvision.datasets.CIFAR10(DIR, download=True)" in cifar


def test_check_reads_the_files(fixture_root):
    r = run("data", "mnist", "--check", "--data-root", fixture_root, "--json")
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.stdout)["datasets"]
    assert rec["state"] == "ok" and (rec["train"], rec["test"]) == (600, 500)
    assert rec["default_model"] == "lenet"


def test_a_corrupt_file_is_invalid_and_a_named_missing_set_exits_1(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for names in builtin.MNIST.files:
        (raw / names[0]).write_bytes(b"\x00\x00\x08\x03not an idx file")
    assert dataset_status("mnist", root=tmp_path).state == "present"  # there, not read
    status = dataset_status("mnist", root=tmp_path, check=True)
    assert status.state == "invalid" and "IDX" in status.error
    r = run("data", "mnist", "cifar10", "--check", "--data-root", tmp_path)
    err = one_line_error(r, 1)
    assert "mnist (invalid)" in err and "cifar10 (missing)" in err
    assert "invalid: " in r.stdout and "missing: data_batch_1" in r.stdout


def test_the_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("DDCLI_OFFLINE", "1")
    rec = json.loads(run("data", "svhn", "--json").stdout)
    assert rec["data_root"] == str(tmp_path) and rec["data_root_from"] == "$DDCLI_DATA_ROOT"
    assert rec["downloads"] is False
    assert rec["datasets"][0]["missing"] == ["train_32x32.mat", "test_32x32.mat"]
    assert rec["datasets"][0]["offline"].startswith(f"copy train_32x32.mat, test_32x32.mat into {tmp_path}")


def test_unknown_dataset_is_a_usage_error(fixture_root):
    err = one_line_error(run("data", "mnsit", "--data-root", fixture_root), 2)
    assert "did you mean 'mnist'" in err
