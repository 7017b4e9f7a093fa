"""`dd eval` through the CLI: exit codes, one-line errors, the table, --json, --record."""

import json

import numpy as np
import pytest
import torch

from ddcli import Bundle
from ddcli.core.params import init_params
from ddcli.cli import app
from ddcli.models import create_model
from ddcli.core.rates import raw_from_lrs
from tests._cli import one_line_error, run



@pytest.fixture
def mnist_bundle(tmp_path):
    """A small fixed-init LeNet bundle for MNIST (2 steps x 10 images, 2 epochs)."""
    g = torch.Generator().manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    b = Bundle(
        images=torch.randn(2, 10, 1, 28, 28, generator=g),
        labels=torch.arange(10).expand(2, 10).contiguous(),
        raw_lrs=raw_from_lrs(torch.full((4,), 0.02)), dataset="mnist",
        classes=[str(i) for i in range(10)], mean=(0.1307,), std=(0.3081,),
        model=model.ddcli_spec, epochs=2, init_params=init_params(model, "xavier", 0),
    )
    return b.save(tmp_path / "m.safetensors")


def test_missing_bundle(tmp_path):
    err = one_line_error(run("eval", tmp_path / "nope.safetensors"), 1)
    assert "no such bundle" in err and "nope.safetensors" in err


def test_corrupt_bundle(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "not a readable safetensors file" in one_line_error(run("eval", bad), 1)


def test_mismatched_model(mnist_bundle, fixture_root):
    err = one_line_error(run("eval", mnist_bundle, "--data-root", fixture_root,
                             "--protocol", "train", "--model", "alexcifarnet"), 1)
    assert "alexcifarnet" in err and "1x28x28" in err and "32 px" in err


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "nope"], "unknown baseline 'nope'"),
    (["--model", "convnet"], "--protocol train"),
    (["--protocol", "sideways"], "--protocol must be one of replay, train, dc, dsa, mtt"),
    (["--n-nets", "0"], "--n-nets must be a positive integer"),
])
def test_usage_errors(mnist_bundle, fixture_root, args, needle):
    err = one_line_error(run("eval", mnist_bundle, "--data-root", fixture_root, *args), 2)
    assert needle in err


def test_set_without_dataset(tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((10, 1, 28, 28), np.float32),
             labels=np.arange(10))
    err = one_line_error(run("eval", tmp_path / "s.npz"), 2)
    assert "--dataset" in err and "npz" in err


def test_table_json_and_record(mnist_bundle, fixture_root):
    r = run("eval", mnist_bundle, "--data-root", fixture_root, "--n-nets", "2",
            "--baseline", "random-real", "--baseline", "knn", "--record")
    assert r.exit_code == 0, r.output
    out = r.stdout
    for needle in ("replay protocol", "lenet", "mnist test set (500 images)", "stored init",
                   "fresh random inits", "random-real", "knn", "vs random-real",
                   "before training", "epoch 2 (step 4)"):
        assert needle in out, needle
    assert "[1/" in r.stderr and "recorded to" in r.stderr
    side = mnist_bundle.with_name("m.eval.json")
    recorded = json.loads(side.read_text())["evaluations"][0]
    assert recorded["settings"]["baselines"] == ["random-real", "knn"]

    j = run("eval", mnist_bundle, "--data-root", fixture_root, "--n-nets", "2", "--json")
    assert j.exit_code == 0, j.output
    rec = json.loads(j.stdout)
    assert rec["protocol"] == "replay" and rec["dataset"] == "mnist" and rec["test_size"] == 500
    assert rec["settings"]["n_nets"] == 2 and rec["settings"]["gd_steps"] == 4
    stored = rec["rows"][0]
    assert stored["group"] == "stored init" and stored["n"] == 1
    assert stored["curve"]["at_step"] == [0, 2, 4]
    assert stored["accuracies"] == recorded["rows"][0]["accuracies"]  # deterministic
    Bundle.load(mnist_bundle)  # untouched and still valid


def test_train_protocol_on_the_cli(mnist_bundle, fixture_root):
    r = run("eval", mnist_bundle, "--data-root", fixture_root, "--protocol", "train",
            "--n-nets", "2", "--train-epochs", "2", "--json", "--batching", "loop")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["protocol"] == "train" and rec["settings"]["batching"] == "loop"
    assert rec["rows"][0]["group"] == "fresh nets" and rec["rows"][0]["n"] == 2
    assert rec["settings"]["train_lr"] == 0.01  # the field's rate, not the learned ones


def test_help_mentions_protocols():
    r = run("eval", "--help")
    assert r.exit_code == 0 and "replay" in r.stdout and "--compare" in r.stdout


def test_eval_options_are_eval_configs_fields(monkeypatch, tmp_path):
    # dd eval's options come from EvalConfig's fields: with none given the command
    # evaluates with EvalConfig() itself, and each given one lands in its field.
    import ddcli.cli.eval as eval_cli
    from ddcli.errors import DDError
    from ddcli.evaluate import EvalConfig
    from ddcli.evaluate._report import eval_flags

    seen = []

    def capture(path, cfg, **kw):
        seen.append(cfg)
        raise DDError("captured")

    monkeypatch.setattr(eval_cli, "evaluate", capture)
    one_line_error(run("eval", tmp_path / "m.safetensors"), 1)
    assert seen[-1] == EvalConfig()
    one_line_error(run("eval", tmp_path / "m.safetensors", "--n-nets", "3", "--lr", "0.05",
                       "--per-step", "--baseline", "kmeans", "--batching", "loop",
                       "--baseline-labels", "set", "--ddranking", "--seed", "4"), 1)
    assert seen[-1] == EvalConfig(n_nets=3, train_lr=0.05, per_step=True, baselines=("kmeans",),
                                  batching="loop", baseline_labels="set", ddranking=True, seed=4)
    helped = run("eval", "--help").stdout
    for f in eval_flags():
        assert f.names[0] in helped


def test_eval_reads_the_data_where_the_bundles_run_read_it(mnist_bundle, fixture_root,
                                                           tmp_path, monkeypatch):
    # As a resume does: without --data-root, the root recorded in the bundle's config is
    # used if that folder is here; a root from another machine falls back to this one's
    # rules (here an empty $DDCLI_DATA_ROOT, offline: one error line).
    monkeypatch.setenv("DDCLI_DATA_ROOT", str(tmp_path / "empty"))
    b = Bundle.load(mnist_bundle)
    b.config = {"data": {"dataset": "mnist", "data_root": str(fixture_root)}}
    here = b.save(tmp_path / "here.safetensors")
    r = run("eval", here, "--n-nets", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["test_size"] == 500  # the fixture's test set
    b.config = {"data": {"dataset": "mnist", "data_root": str(tmp_path / "elsewhere")}}
    gone = b.save(tmp_path / "gone.safetensors")
    err = one_line_error(run("eval", gone, "--n-nets", "1"), 1)
    assert "not found in" in err and str(tmp_path / "empty") in err
    # --data-root still wins over the record
    r = run("eval", gone, "--data-root", fixture_root, "--n-nets", "1", "--json")
    assert r.exit_code == 0, r.output
