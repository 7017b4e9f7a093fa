"""Runs that outlive the machine: a run folder committed under runs/ resumes, bit for bit,
from a fresh clone on another machine, whose paths (and data root) differ."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ddcli import Bundle
from ddcli.layering import build_config
from ddcli.data import resumed_data_root
from ddcli.infra.provenance import portable_command
from tests._cli import one_line_error, run
from tests._toy import distill_until_ctrl_c
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--steps", "2", "--epochs", "1", "--batch-size", "32", "--iterations", "4"]


def _machine(folder: Path) -> Path:
    """A machine's data root: the MNIST fixture copied to its own absolute path."""
    shutil.copytree(FIXTURES / "MNIST", folder / "data" / "MNIST")
    return folder / "data"


def _interrupted_run(machine: Path) -> Path:
    """A run on ``machine`` stopped after 2 of 4 iterations; returns its run folder."""
    data = _machine(machine)
    cfg = build_config(overrides={
        "data": {"dataset": "mnist", "data_root": str(data), "batch_size": 32},
        "synth": {"steps": 2, "epochs": 1}, "optim": {"iterations": 4},
        "run": {"checkpoint_every": 1}})
    distill_until_ctrl_c(cfg, machine / "m.safetensors", None, at=2)
    assert not (machine / "m.safetensors").exists()
    return machine / "m.run"


@pytest.mark.parametrize("root_from", ["flag", "env"])
def test_a_committed_run_resumes_bit_exactly_in_a_fresh_clone(tmp_path, monkeypatch, root_from):
    monkeypatch.delenv("DDCLI_DATA_ROOT", raising=False)
    ref_data = _machine(tmp_path / "ref")
    r = run("distill", "mnist", "--data-root", ref_data, *SMALL, "-o",
            tmp_path / "ref" / "ref.safetensors", "-q")
    assert r.exit_code == 0, r.output

    # machine A: the run starts, stops, and its folder is committed under runs/
    clone = tmp_path / "clone"
    shutil.copytree(_interrupted_run(tmp_path / "a"), clone / "runs" / "m")
    shutil.rmtree(tmp_path / "a")  # machine A, its data root included, is gone
    recorded = json.loads((clone / "runs" / "m" / "config.json").read_text())
    assert recorded["data"]["data_root"] == str(tmp_path / "a" / "data")  # a stale path now

    # machine B: a fresh clone elsewhere, its data at another path
    data_b = _machine(tmp_path / "b")
    monkeypatch.chdir(clone)
    if root_from == "env":
        monkeypatch.setenv("DDCLI_DATA_ROOT", str(data_b))
    root = ["--data-root", data_b] if root_from == "flag" else []
    r = run("distill", "--resume", "runs/m", *root, "-q")
    assert r.exit_code == 0, r.output

    done, ref = Bundle.load(clone / "runs" / "m.safetensors"), Bundle.load(
        tmp_path / "ref" / "ref.safetensors")
    assert done.summary["iterations"] == ref.summary["iterations"] == 4
    for name in ("images", "raw_lrs"):
        assert torch.equal(getattr(done, name), getattr(ref, name)), name
    # the committed config.json keeps the first process's record beside the resume's
    prov = json.loads((clone / "runs" / "m" / "config.json").read_text())["provenance"]
    assert len(prov["earlier"]) == 1 and prov["earlier"] == done.provenance["earlier"]
    assert prov["earlier"][0]["date"] <= prov["date"] and "earlier" not in prov["earlier"][0]
    # nothing in the bundle names a machine's data folder
    text = json.dumps({"config": done.config, "provenance": done.provenance})
    assert str(tmp_path) not in text and done.config["data"]["data_root"] is None


def test_resume_errors_are_one_line(tmp_path, monkeypatch):
    folder = _interrupted_run(tmp_path / "a")
    shutil.rmtree(tmp_path / "a" / "data")  # the recorded root is gone, nothing else given
    monkeypatch.delenv("DDCLI_DATA_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    err = one_line_error(run("distill", "--resume", folder, "-q"), 1)
    assert "train-images-idx3-ubyte" in err and "--data-root" in err, err
    assert str(tmp_path / "empty-cache") in err  # it says where it looked instead

    (folder / "checkpoint.pt").write_bytes(b"half a checkpoint")
    err = one_line_error(run("distill", "--resume", folder, "--data-root", tmp_path, "-q"), 1)
    assert "unreadable" in err, err
    err = one_line_error(run("distill", "--resume", tmp_path / "nowhere", "-q"), 1)
    assert "no run folder" in err, err


def test_which_data_root_a_resume_reads(tmp_path):
    here = str(tmp_path)
    assert resumed_data_root("/gone/elsewhere", "/given") == "/given"
    assert resumed_data_root(here, None) == here  # the same machine: as recorded
    assert resumed_data_root("/gone/elsewhere", None) is None  # $DDCLI_DATA_ROOT, else cache
    assert resumed_data_root(None, None) is None


def test_provenance_leaves_out_the_data_root_of_the_command():
    assert portable_command(["dd", "distill", "--data-root", "/home/me/data", "-o", "x"]) == [
        "dd", "distill", "--data-root", "DIR", "-o", "x"]
    assert portable_command(["dd", "eval", "--data-root=/d"]) == ["dd", "eval", "--data-root=DIR"]


def test_an_old_bundle_with_a_machine_path_still_evaluates(tmp_path, fixture_root):
    from tests.test_cli_messages import _mnist_bundle

    b = Bundle.load(_mnist_bundle(tmp_path / "m.safetensors"))
    b.config = {"data": {"dataset": "mnist", "data_root": "/home/someone/data"}}
    b.provenance = {"data": {"name": "mnist", "root": "/home/someone/data"}}
    b.save(tmp_path / "old.safetensors")
    r = run("eval", tmp_path / "old.safetensors", "--data-root", fixture_root, "--n-nets", "1")
    assert r.exit_code == 0, r.output


def test_runs_folder_is_committed_and_small():
    assert (ROOT / "runs" / "README.md").is_file()
    if (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q",
                                  "runs/NAME/checkpoint.pt"], capture_output=True)
        assert ignored.returncode == 1, ".gitignore hides runs/"
    folders = [p for p in (ROOT / "runs").iterdir() if p.is_dir()]
    if (ROOT / ".git").exists():  # the committed runs (a run in flight here may not have
        # written its first checkpoint yet)
        tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "runs"],
                                 capture_output=True, text=True).stdout.split()
        folders = [p for p in folders if any(t.startswith(f"runs/{p.name}/") for t in tracked)]
    for folder in folders:
        # a run folder, or the expert pool a run resumes from (`dd pretrain -o runs/...`)
        assert ((folder / "config.json").is_file() and (folder / "checkpoint.pt").is_file()
                or (folder / "pool.json").is_file()), folder
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 20 * 2**20, f"{folder} holds {size / 2**20:.1f} MB (runs/ takes < 20 MB)"


def test_every_committed_run_has_its_pool_committed_with_it():
    # A run that starts from a pool (MTT's experts, pretrained inits) resumes from a fresh
    # clone only if the pool's net and trajectory files are committed too: they are
    # *.safetensors, which .gitignore hides everywhere else.
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("runs/POOL/net-00000.safetensors", "runs/POOL/traj-00000.safetensors"):
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path],
                                 capture_output=True)
        assert ignored.returncode == 1, f".gitignore hides {path}"
    tracked = set(subprocess.run(["git", "-C", str(ROOT), "ls-files", "runs"],
                                 capture_output=True, text=True).stdout.split())
    for config in sorted(t for t in tracked if t.endswith("/config.json")):
        pool = json.loads((ROOT / config).read_text()).get("init", {}).get("pool")
        if not pool:
            continue
        assert f"{pool}/pool.json" in tracked, f"{config} resumes from {pool}, not committed"
        manifest = json.loads((ROOT / pool / "pool.json").read_text())
        for net in manifest["nets"]:
            for key in ("file", "trajectory"):
                if net.get(key):
                    assert f"{pool}/{net[key]}" in tracked, f"{pool}/{net[key]} not committed"
