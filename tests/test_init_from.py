"""``--init-from BUNDLE``: a run that starts from another run's images (MTT from a DM set,
say): the images land class by class, the file's hash is recorded, bad files are refused
in one line before anything is written, and a resume no longer needs the file."""

import json

import pytest
import torch

from ddcli import Bundle, distill, resume
from ddcli.engine.inits import bundle_initial_images
from ddcli.errors import ConfigError

from tests._cli import one_line_error, run
from tests._toy import distill_until_ctrl_c, toy_config, toy_data

DM = {"objective": {"kind": "distribution"}, "init": {"mode": "random"},
      "model": {"name": "convnet", "init_scheme": "default", "kwargs": {"width": 4, "depth": 2}},
      "synth": {"steps": 2, "epochs": 1, "images_per_class": 1, "step_lr": 0.01},
      "data": {"batch_size": 8},
      "optim": {"iterations": 2, "meta_optimizer": "sgd", "meta_lr": 1.0, "decay_factor": 1.0}}
# A start that barely moves: the images after one iteration are the ones it began from.
STILL = {"synth": {"steps": 1, "images_per_class": 2}, "optim": {"iterations": 1,
                                                                  "meta_lr": 1e-12}}


@pytest.fixture
def source(tmp_path):
    """A toy DM bundle of 2 steps x 3 classes x 1 image: class c has 2 images, one a step."""
    data = toy_data()
    path = tmp_path / "dm.safetensors"
    distill(toy_config(DM), out=path, data=data)
    return data, path


def test_images_land_class_by_class_in_the_bundles_order(source):
    data, path = source
    b = Bundle.load(path)
    labels = torch.tensor([[2, 0, 1, 0, 2, 1]])  # any slot order: each class takes its own
    images = bundle_initial_images(str(path), data, labels)
    assert images.shape == (1, 6, 1, 8, 8)
    flat = images[0]
    for c in range(3):
        want = b.images[:, b.labels[0] == c]  # (2 steps, 1, ...): step 0's image first
        assert torch.equal(flat[labels[0] == c], want.reshape(2, 1, 8, 8))


def test_a_run_starts_from_the_bundle_and_records_its_hash(source, tmp_path):
    data, path = source
    out = tmp_path / "mtt.safetensors"
    cfg = toy_config(DM, STILL, synth={"init_from": str(path)})
    b = distill(cfg, out=out, data=data).bundle
    src = Bundle.load(path)
    for c in range(3):
        torch.testing.assert_close(b.images[0, b.labels[0] == c],
                                   src.images[:, src.labels[0] == c].flatten(0, 1))
    import hashlib
    assert b.provenance["init_from_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert b.config["synth"]["init_from"] == str(path)
    # without it, the same run starts elsewhere (noise, as --init-images says)
    other = distill(toy_config(DM, STILL), out=tmp_path / "noise.safetensors", data=data).bundle
    assert not torch.allclose(other.images, b.images)


def test_a_resume_does_not_need_the_file(source, tmp_path):
    data, path = source
    cfg = toy_config(DM, synth={"init_from": str(path), "steps": 1, "images_per_class": 2},
                     optim={"iterations": 4})
    full = distill(cfg, out=tmp_path / "full.safetensors", data=data).bundle
    distill_until_ctrl_c(cfg, tmp_path / "part.safetensors", data, at=2)
    path.unlink()
    resumed = resume(tmp_path / "part.run", data=data).bundle
    assert torch.equal(full.images, resumed.images)


def test_a_bundle_of_another_shape_or_dataset_is_refused(source, tmp_path):
    data, path = source
    labels = torch.arange(3).repeat_interleave(3).view(1, 9)
    with pytest.raises(ConfigError, match="has 2 images of class 0; this run has 3"):
        bundle_initial_images(str(path), data, labels)
    b = Bundle.load(path)
    b.dataset = "mnist"
    b.save(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="is a mnist set; this run distils toy"):
        bundle_initial_images(str(tmp_path / "m.safetensors"), data, labels)
    with pytest.raises(ConfigError, match="has images of shape"):
        bundle_initial_images(str(path), toy_data(hw=6), labels)
    with pytest.raises(ConfigError, match="^--init-from: no such bundle"):
        bundle_initial_images(str(tmp_path / "none.safetensors"), data, labels)


def test_cli_refuses_a_bad_init_bundle_in_one_line_and_writes_nothing(tmp_path, fixture_root):
    common = ("distill", "mnist", "--data-root", fixture_root, "--model", "convnet",
              "--model-arg", "width=4", "--model-arg", "depth=2", "--objective",
              "distribution", "--init-mode", "random", "--steps", "1", "--epochs", "1",
              "--iterations", "1", "--quiet")
    first = tmp_path / "first.safetensors"
    r = run(*common, "-o", first, "--ipc", "1")
    assert r.exit_code == 0, r.output
    out = tmp_path / "second.safetensors"
    err = one_line_error(run(*common, "--ipc", "2", "--init-from", first, "-o", out,
                             "--run-dir", tmp_path / "second.run"), 2)
    assert "--init-from" in err and "1 images of class 0; this run has 2" in err
    assert not out.exists() and not (tmp_path / "second.run").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bundle")
    err = one_line_error(run(*common, "--init-from", notes, "-o", out), 2)
    assert "--init-from" in err and "not a ddcli bundle" in err
    # the right shape runs, and says where its images came from in config.json
    r = run(*common, "--ipc", "1", "--init-from", first, "-o", out, "--run-dir",
            tmp_path / "ok.run")
    assert r.exit_code == 0, r.output
    conf = json.loads((tmp_path / "ok.run" / "config.json").read_text())
    assert conf["synth"]["init_from"] == str(first)
    assert len(conf["provenance"]["init_from_sha256"]) == 16


def test_visualize_change_refuses_a_run_that_started_from_a_bundle(source, tmp_path):
    data, path = source
    out = tmp_path / "b.safetensors"
    distill(toy_config(DM, STILL, synth={"init_from": str(path)}), out=out, data=data)
    err = one_line_error(run("visualize", out, "--change", "-o", tmp_path / "v"), 2)
    assert "started from another bundle's images (--init-from" in err
