"""`dd distill` through the CLI: exit codes, one-line errors, outputs."""

import json
import os
from dataclasses import dataclass, field

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from ddcli import Bundle
from ddcli.cli import app
from ddcli.cli._options import config_options
from ddcli.cli._scale import forward_args
from ddcli.config import config_flags, flag_overrides, resumable_settings
from ddcli import layering
from ddcli.layering import build_config
from ddcli.infra.sections import Section, collect_flags, flag
from tests._cli import one_line_error, run

runner = CliRunner()


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0 and "distill" in r.stdout


def test_unknown_dataset(tmp_path):
    err = one_line_error(run("distill", "imagenet-9000", "--data-root", tmp_path, "-o",
                             tmp_path / "x.safetensors"), 2)
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


def test_model_args_set_the_models_options(tmp_path, fixture_root):
    # --model-arg KEY=VALUE (JSON values, else strings) lands in model.kwargs
    from ddcli import Bundle
    from ddcli.cli._options import parse_model_args

    assert parse_model_args(["width=4", "hidden=[8, 8]", "norm=none"]) == {
        "width": 4, "hidden": [8, 8], "norm": "none"}
    out = tmp_path / "x.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--model", "convnet",
            "--model-arg", "width=4", "--model-arg", "depth=2", "--steps", "1", "--epochs", "1",
            "--iterations", "1", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    b = Bundle.load(out)
    assert (b.model["width"], b.model["depth"]) == (4, 2)
    assert b.config["model"]["kwargs"] == {"width": 4, "depth": 2}
    err = one_line_error(run("distill", "--model-arg", "width", "-o", tmp_path / "y.safetensors"), 2)
    assert "--model-arg takes KEY=VALUE (e.g. width=32), got 'width'" in err


def test_resume_refuses_new_model_args(tmp_path):
    run_dir = tmp_path / "m.run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(build_config().to_dict()))
    err = one_line_error(run("distill", "--resume", run_dir, "--model-arg", "width=3",
                             "--dry-run"), 2)
    assert "model.kwargs can't change when resuming" in err


def test_resume_missing_run_dir(tmp_path):
    err = one_line_error(run("distill", "--resume", tmp_path / "nope"), 1)
    assert "no run folder" in err


def test_resume_dry_run_refuses_what_a_resume_cant_change(tmp_path):
    # --dry-run of a resume sizes the config the resume would run with, through the same
    # check as the resume itself: a setting fixed at the start can't change.
    run_dir = tmp_path / "m.run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(build_config().to_dict()))
    err = one_line_error(run("distill", "--resume", run_dir, "--steps", "2", "--dry-run"), 2)
    assert "--steps can't change when resuming" in err


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
    # Extending a finished run would overwrite its bundle: refused without --force ...
    before = out.read_bytes()
    err = one_line_error(run("distill", "--resume", tmp_path / "m.run", "--iterations", "5"), 2)
    assert "--force" in err and "-o" in err and out.read_bytes() == before
    # ... or written elsewhere with -o, which a resume honours and reports.
    other = tmp_path / "more.safetensors"
    r = run("distill", "--resume", tmp_path / "m.run", "--iterations", "4", "-o", other, "--json",
            "--quiet")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["iterations"] == 4 and rec["bundle"] == str(other) and other.exists()
    assert out.read_bytes() == before
    r = run("distill", "--resume", tmp_path / "m.run", "--iterations", "5", "--force", "--quiet",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["iterations"] == 5 and json.loads(r.stdout)["bundle"] == str(other)
    prov = json.loads(r.stdout)["provenance"]
    assert prov["versions"]["ddcli"] and prov["threads"] >= 1 and prov["data"]["sha256"]


def test_unwritable_outputs_are_refused_before_any_training(tmp_path, fixture_root):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root ignores modes)")
        for where in (["-o", locked / "m.safetensors"],
                      ["-o", tmp_path / "m.safetensors", "--run-dir", locked / "r.run"]):
            err = one_line_error(run("distill", "mnist", "--data-root", fixture_root,
                                     "--iterations", "1", *where), 1)
            assert "can't write" in err
    finally:
        locked.chmod(0o700)
    # A file where the run folder should be is refused the same way, even for root.
    (tmp_path / "taken.run").write_text("not a folder")
    err = one_line_error(run("distill", "mnist", "--data-root", fixture_root, "--iterations",
                             "1", "-o", tmp_path / "taken.safetensors"), 1)
    assert "can't write the run folder" in err and "is a file" in err


# --- the flags are generated from the config ------------------------------------------

def _parse(*args):
    command = typer.main.get_command(app).commands["distill"]
    return command.make_context("distill", [str(a) for a in args])


def test_every_config_flag_is_a_distill_option_and_back():
    command = typer.main.get_command(app).commands["distill"]
    params = {p.name: p for p in command.params}
    for f in config_flags():
        param = params[f.dest]
        assert param.param_type_name == ("argument" if f.argument else "option")
        if not f.argument:
            assert param.opts == list(f.names) and param.rich_help_panel == f.panel
            assert param.secondary_opts == ([f"--no-{f.names[0][2:]}"] if f.type is bool else [])
    # Each spelling lands in its config field; flags not given stay out of the overrides.
    ctx = _parse("fashion-mnist", "--ipc", "3", "--distill-lr", "0.1", "--lr", "0.2",
                 "--augment", "none", "--init-mode", "random", "--iterations", "7")
    assert flag_overrides(ctx.params) == {
        "data": {"dataset": "fashion-mnist", "augment": "none"},
        "synth": {"images_per_class": 3, "step_lr": 0.1},
        "optim": {"meta_lr": 0.2, "iterations": 7}, "init": {"mode": "random"}}
    cfg = build_config(preset="paper-cifar10-fixed", overrides=flag_overrides(ctx.params))
    assert cfg.data.augment == "none" and cfg.synth.images_per_class == 3  # over the preset's


def test_forward_args_rebuild_the_command_line_for_the_workers():
    ctx = _parse("mnist", "--ipc", "2", "--no-batch-nets", "--meta-lr", "0.1", "--nproc", "2",
                 "--dry-run", "-o", "x.safetensors", "--quiet", "--init-mode", "random")
    args = forward_args(ctx)
    assert args[0] == "distill" and "--nproc" not in args and "--dry-run" not in args
    again = _parse(*args[1:])
    assert {k: v for k, v in again.params.items() if k not in ("nproc", "dry_run")} == {
        k: v for k, v in ctx.params.items() if k not in ("nproc", "dry_run")}
    assert again.params["batch_nets"] is False and again.params["dataset"] == "mnist"


def test_resumable_settings_come_from_the_metadata():
    assert layering.RESUMABLE_OVERRIDES == resumable_settings() == {
        ("optim", "meta_lr"), ("optim", "iterations"), ("optim", "real_epochs"),
        ("run", "checkpoint_every"), ("run", "snapshot_every"), ("run", "eval_every"),
        ("run", "eval_nets"), ("run", "log_every"), ("run", "device"), ("data", "data_root"),
        ("run", "nproc"), ("run", "unroll_memory"), ("run", "batch_nets")}


def test_resume_with_real_epochs_replaces_the_iterations_budget(tmp_path, fixture_root):
    out = tmp_path / "m.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--steps", "1", "--epochs", "1",
            "--batch-size", "64", "--iterations", "3", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    # 600 fixture images / 64 = 9 iterations per epoch: 0.5 real epochs is 4 iterations.
    r = run("distill", "--resume", tmp_path / "m.run", "--real-epochs", "0.5", "--force", "--quiet",
            "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["iterations"] == 4
    assert Bundle.load(out).config["optim"]["iterations"] is None
    err = one_line_error(run("distill", "--resume", tmp_path / "m.run", "--steps", "2"), 2)
    assert "can't change when resuming" in err


@dataclass
class _Toy(Section):
    window_sampling: str = field(default="last", metadata=flag(
        "last or random.", panel="New", choices=("last", "random")))
    soft_labels: bool = field(default=False, metadata=flag("Learn the labels.", panel="New"))
    window: int | None = field(default=None, metadata=flag("Truncate the unroll.", panel="New"))
    label_lr: float = field(default=0.5, metadata=flag("Label rate.", panel="New",
                                                       resumable=True))
    config_only: int = 3


@dataclass
class _ToyConfig(Section):
    synth: _Toy = field(default_factory=_Toy)


def test_a_new_field_of_any_kind_is_a_flag_with_nothing_else_to_write():
    flags = collect_flags(_ToyConfig)
    assert [f.dest for f in flags] == ["window_sampling", "soft_labels", "window", "label_lr"]
    assert [f.default_label for f in flags] == ["last", None, None, "0.5"]
    toy = typer.Typer(add_completion=False)
    seen = {}

    @toy.command()
    @config_options(["New"], flags=flags)
    def cmd(**values) -> None:
        seen.update(values)

    r = runner.invoke(toy, ["--window-sampling", "random", "--soft-labels", "--window", "8",
                            "--label-lr", "0.25"])
    assert r.exit_code == 0, r.output
    assert seen == {"window_sampling": "random", "soft_labels": True, "window": 8,
                    "label_lr": 0.25}
    r = runner.invoke(toy, ["--no-soft-labels"])
    assert r.exit_code == 0 and seen["soft_labels"] is False and seen["window"] is None
    assert runner.invoke(toy, ["--window", "eight"]).exit_code == 2
    assert "--config-only" not in runner.invoke(toy, ["--help"]).stdout


def test_a_failed_final_write_keeps_the_checkpoint_and_says_where_to_write(
        tmp_path, fixture_root, monkeypatch):
    import errno

    from ddcli.bundle import Bundle as B

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(B, "save", full_disk)
    out = tmp_path / "m.safetensors"
    err = one_line_error(run("distill", "mnist", "--data-root", fixture_root, "--steps", "1",
                             "--epochs", "1", "--batch-size", "64", "--iterations", "2",
                             "-o", out, "--quiet"), 1)
    assert "No space left" in err and "--resume" in err and "-o OTHER" in err
    assert (tmp_path / "m.run" / "checkpoint.pt").exists() and not out.exists()
    monkeypatch.undo()
    other = tmp_path / "elsewhere.safetensors"
    r = run("distill", "--resume", tmp_path / "m.run", "-o", other, "--quiet")
    assert r.exit_code == 0, r.output
    assert B.load(other).summary["iterations"] == 2  # nothing retrained


def test_other_commands_refuse_unwritable_outputs_first(tmp_path, fixture_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = one_line_error(run("pretrain", "mnist", "--data-root", fixture_root, "-o",
                             blocker / "pool"), 1)
    assert "can't write the pool" in err
