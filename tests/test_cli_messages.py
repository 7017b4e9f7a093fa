"""What the CLI says: a file that is not a bundle, a folder that is not a run, a config
of the wrong kind, a format that can't take a set, counts, usage lines, wrapped lists."""

import json

import pytest
import torch

from ddcli import Bundle
from ddcli.cli.distill import preset_listing
from ddcli.core.params import init_params
from ddcli.core.rates import raw_from_lrs
from ddcli.infra.text import count
from ddcli.models import create_model
from ddcli.presets import list_presets
from tests._cli import one_line_error, run


def _mnist_bundle(path, steps=1):
    """A fixed-init LeNet bundle for MNIST: ``steps`` x 10 images, 1 epoch."""
    g = torch.Generator().manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    return Bundle(
        images=torch.randn(steps, 10, 1, 28, 28, generator=g),
        labels=torch.arange(10).expand(steps, 10).contiguous(),
        raw_lrs=raw_from_lrs(torch.full((steps,), 0.02)), dataset="mnist",
        classes=[str(i) for i in range(10)], mean=(0.1307,), std=(0.3081,),
        model=model.ddcli_spec, epochs=1, init_params=init_params(model, "xavier", 0),
        provenance={"versions": {}, "threads": 1, "device": "cpu"},
    ).save(path)


def test_a_text_file_is_not_called_a_truncated_bundle(tmp_path):
    for name in ("notes.txt", "notes.safetensors"):
        (tmp_path / name).write_text("hello, these are my notes\n")
        err = one_line_error(run("eval", tmp_path / name), 1)
        assert "is not a ddcli bundle" in err and "truncated" not in err, err
    # a real bundle cut short is still called truncated
    data = _mnist_bundle(tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in one_line_error(run("eval", tmp_path / "cut.safetensors"), 1)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "step_0.png").write_bytes(b"\x89PNG")
    err = one_line_error(run("distill", "--resume", pngs), 1)
    assert "is not a run folder" in err and "first checkpoint" not in err, err
    # a run folder whose run stopped before its first checkpoint is told apart
    (pngs / "config.json").write_text(json.dumps({"data": {"dataset": "mnist"}}))
    err = one_line_error(run("distill", "--resume", pngs), 1)
    assert "stopped before its first checkpoint" in err, err


def test_a_config_file_of_another_kind(tmp_path):
    conf = tmp_path / "settings.txt"
    conf.write_text("steps = 2\n")
    err = one_line_error(run("distill", "--config", conf), 2)
    assert "must be TOML (.toml) or JSON (.json)" in err and "not valid txt" not in err, err
    (tmp_path / "c.json").write_text("{steps")
    assert "is not valid JSON" in one_line_error(run("distill", "--config", tmp_path / "c.json"), 2)


def test_ddranking_export_of_mnist_is_a_usage_error(tmp_path):
    b = _mnist_bundle(tmp_path / "m.safetensors")
    err = one_line_error(run("export", b, "--format", "ddranking", "-o", tmp_path / "d"), 2)
    assert "DD-Ranking evaluates only" in err and not (tmp_path / "d").exists()


def test_dc_manifest_keeps_the_whole_file_name(tmp_path):
    b = _mnist_bundle(tmp_path / "m.safetensors")
    r = run("export", b, "--format", "dc", "-o", tmp_path / "tiny.dc")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tiny.dc.manifest.json").is_file()
    assert not (tmp_path / "tiny.manifest.json").exists()
    manifest = json.loads((tmp_path / "tiny.dc.manifest.json").read_text())
    assert manifest["format"] == "ddcli-dc"


def test_counts_are_singular_for_one():
    assert [count(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert count(1, "process") == "1 process" and count(3, "process") == "3 processes"
    assert count(1, "pass") == "1 pass" and count(2, "pass") == "2 passes"


def test_eval_header_of_a_one_step_bundle_made_with_one_thread(tmp_path, fixture_root):
    b = _mnist_bundle(tmp_path / "m.safetensors", steps=1)
    r = run("eval", b, "--data-root", fixture_root, "--n-nets", "1")
    assert r.exit_code == 0, r.output
    assert "1 step x 10 images" in r.stdout and "1 steps" not in r.stdout, r.stdout
    assert "(1 thread)" in r.stdout and "1 threads" not in r.stdout, r.stdout


def test_dry_run_counts_nets_and_processes(tmp_path, fixture_root):
    r = run("distill", "mnist", "--data-root", fixture_root, "--steps", "1", "--epochs", "1",
            "--dry-run")
    assert r.exit_code == 0, r.output
    assert "1 GD step, 1 net at once" in r.stdout and "1 process," in r.stdout, r.stdout
    assert "(s)" not in r.stdout


def test_list_presets_fits_80_columns():
    text = preset_listing(80)
    assert max(map(len, text.splitlines())) <= 80
    for name, description in list_presets():  # every name, and every word of its description
        assert f"\n{name} " in f"\n{text}"
        assert description.split()[-1] in text
    r = run("distill", "--list-presets", env={"COLUMNS": "80"})
    assert r.exit_code == 0 and max(map(len, r.stdout.splitlines())) <= 80


@pytest.mark.parametrize("command, argument", [
    ("eval", "PATH"), ("visualize", "BUNDLE"), ("export", "BUNDLE"), ("pretrain", "DATASET")])
def test_usage_lines_name_arguments_in_capitals(command, argument):
    r = run(command, "--help", env={"COLUMNS": "100"})
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert usage.split()[-1] == argument and "{" not in usage, usage
