"""`dd eval RUN_DIR`: the set of a run folder's last checkpoint, evaluated as the bundle
the run would write there, without touching the run (it may still be going)."""

import json

import torch

from ddcli import Bundle, resume
from ddcli.engine.reader import run_bundle
from ddcli.evaluate import evaluate, evaluate_bundle
from ddcli.evaluate._sets import set_kind

from tests._cli import one_line_error, run
from tests._toy import distill_until_ctrl_c, toy_config, toy_data


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_run_folder_is_the_bundle_its_checkpoint_would_write(tmp_path):
    data = toy_data()
    cfg = toy_config(run={"checkpoint_every": 1}, optim={"iterations": 6})
    distill_until_ctrl_c(cfg, tmp_path / "part.safetensors", data, at=3)
    folder = tmp_path / "part.run"
    assert set_kind(folder) == "run"

    bundle, seen = run_bundle(folder, data=data)
    assert seen is data and bundle.summary["iterations"] == 3
    # What the run itself writes there: the finished-at-3 bundle of the same checkpoint.
    resume(folder, overrides={"optim": {"iterations": 3}}, data=data,
           out=tmp_path / "at3.safetensors")
    written = Bundle.load(tmp_path / "at3.safetensors")
    for name in ("images", "raw_lrs", "labels"):
        assert torch.equal(getattr(bundle, name), getattr(written, name)), name
    assert (bundle.model, bundle.init_mode, bundle.epochs) == (
        written.model, written.init_mode, written.epochs)
    assert bundle.provenance["git_commit"] == written.provenance["earlier"][-1]["git_commit"]

    kw = dict(data=data, protocol="train", n_nets=2, train_epochs=3, train_lr=0.05)
    got = evaluate(folder, **kw)
    want = evaluate_bundle(tmp_path / "at3.safetensors", **kw)
    assert got.primary.accuracies == want.primary.accuracies
    assert got.source == f"{folder} (checkpoint at iteration 3)"


def test_reading_a_run_folder_changes_nothing_in_it(tmp_path):
    data = toy_data()
    cfg = toy_config(run={"checkpoint_every": 1}, optim={"iterations": 6})
    distill_until_ctrl_c(cfg, tmp_path / "part.safetensors", data, at=2)
    folder = tmp_path / "part.run"
    before = _files(folder)
    evaluate(folder, data=data, protocol="train", n_nets=1, train_epochs=1)
    assert _files(folder) == before and not (tmp_path / "part.safetensors").exists()


def test_cli_evaluates_a_run_folder_and_records_beside_it(tmp_path, fixture_root):
    out = tmp_path / "m.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--steps", "1", "--epochs", "1",
            "--batch-size", "64", "--iterations", "2", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "m.run"
    r = run("eval", folder, "--data-root", fixture_root, "--protocol", "train", "--n-nets", "1",
            "--train-epochs", "1", "--json", "--record")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["source"] == f"{folder} (checkpoint at iteration 2)"
    assert report["dataset"] == "mnist" and 0 <= report["rows"][0]["mean"] <= 1
    sidecar = json.loads((tmp_path / "m.run.eval.json").read_text())
    assert sidecar["evaluations"][0]["source"] == report["source"]
    # A run stopped before its first checkpoint: one line saying so.
    (folder / "checkpoint.pt").unlink()
    err = one_line_error(run("eval", folder, "--data-root", fixture_root), 1)
    assert "has no checkpoint.pt" in err
