"""`dd distill` through the CLI: exit codes, one-line errors, outputs."""

import json

import pytest
from typer.testing import CliRunner

from ddcli import Bundle
from ddcli.cli import app

runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def one_line_error(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    return err


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0 and "distill" in r.stdout


def test_unknown_dataset(tmp_path):
    err = one_line_error(run("distill", "imagenet-9000", "--data-root", tmp_path, "-o",
                             tmp_path / "x.safetensors"), 1)
    assert err.startswith("error:") and "imagenet-9000" in err and "mnist" in err
    assert len(err.splitlines()) == 1


def test_missing_data_offline(tmp_path):
    err = one_line_error(run("distill", "mnist", "--data-root", tmp_path, "-o",
                             tmp_path / "x.safetensors"), 1)
    assert len(err.splitlines()) == 1
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err and "--data-root" in err


@pytest.mark.parametrize("flag, value, needle", [
    ("--steps", "0", "--steps must be a positive integer"),
    ("--lr", "-1", "--meta-lr must be a positive number"),
    ("--init-mode", "sideways", "--init-mode must be one of"),
    ("--unroll-memory", "lots", "--unroll-memory must be one of"),
    ("--device", "tpu", "--device"),
])
def test_bad_flag_values_are_usage_errors(tmp_path, fixture_root, flag, value, needle):
    r = run("distill", "mnist", "--data-root", fixture_root, flag, value,
            "-o", tmp_path / "x.safetensors")
    err = one_line_error(r, 2)
    assert needle in err and len(err.splitlines()) == 1


def test_non_integer_flag_is_usage_error():
    r = run("distill", "mnist", "--steps", "many")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_config_file_and_flags_override(tmp_path, fixture_root):
    conf = tmp_path / "c.toml"
    conf.write_text('[synth]\nsteps = 2\nepochs = 1\n[optim]\niterations = 2\n'
                    '[data]\nbatch_size = 64\n')
    out = tmp_path / "b.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--config", conf, "--epochs", "2",
            "-o", out, "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["bundle"] == str(out) and rec["steps"] == 2 and rec["epochs"] == 2
    b = Bundle.load(out)
    synth = {k: b.config["synth"][k] for k in ("steps", "epochs", "images_per_class", "step_lr")}
    assert synth == {"steps": 2, "epochs": 2, "images_per_class": 1, "step_lr": 0.02}
    assert b.config["data"]["batch_size"] == 64 and b.raw_lrs.numel() == 4


def test_bad_config_file(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[synth]\nstepz = 2\n")
    err = one_line_error(run("distill", "--config", conf), 2)
    assert "stepz" in err


def test_resume_missing_run_dir(tmp_path):
    err = one_line_error(run("distill", "--resume", tmp_path / "nope"), 1)
    assert "no run folder" in err


def test_summary_line_and_resume_via_cli(tmp_path, fixture_root):
    out = tmp_path / "m.safetensors"
    args = ["distill", "mnist", "--data-root", fixture_root, "--steps", "2", "--epochs", "1",
            "--batch-size", "64", "--iterations", "3", "-o", out, "--quiet"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert str(out) in r.stdout and "20 images" in r.stdout and "2 lrs" in r.stdout
    # Running again into the same run folder is refused, not silently overwritten.
    err = one_line_error(run(*args), 2)
    assert "--resume" in err
    # Extend the budget on resume.
    r = run("distill", "--resume", tmp_path / "m.run", "--iterations", "5", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["iterations"] == 5
