"""The help screens and the exit codes: what a user sees before anything runs.

No snapshots: the tests check properties that hold at any terminal width (panels, each
default once, no type for plain flags, lines that fit) and exact error lines.
"""

import os
import shlex
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from ddcli.cli import _docs, _readme, app
from ddcli.cli._app import _Group, _Typer
from ddcli.cli.distill import PANELS
from ddcli.config import config_flags

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = ("distill", "eval", "pretrain", "export", "visualize", "data")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def help_lines(monkeypatch, command, columns=80):
    monkeypatch.setenv("COLUMNS", str(columns))
    r = run(command, "--help")
    assert r.exit_code == 0, r.output
    return r.stdout.rstrip("\n").splitlines()


def panel_titles(lines):
    return [line.split("─ ", 1)[1].split(" ─", 1)[0] for line in lines if line.startswith("╭─ ")]


# --- the help screen -------------------------------------------------------------------

@pytest.mark.parametrize("columns", [60, 80, 120])
def test_distill_help_fits_and_groups_the_flags_into_panels(monkeypatch, columns):
    lines = help_lines(monkeypatch, "distill", columns)
    assert max(len(line) for line in lines) <= columns
    *titles, last = panel_titles(lines)
    assert last == "Examples"
    assert titles == [p for p in PANELS if p in titles]
    assert set(titles) == {f.panel for f in config_flags()} | {"Start from"}
    text = "\n".join(lines)
    for param in typer.main.get_command(app).commands["distill"].params:
        for name in _docs.names(param):
            assert name in text, f"{name} is missing from dd distill --help"


def test_distill_help_is_about_a_screen_with_the_common_case_first(monkeypatch):
    lines = help_lines(monkeypatch, "distill")
    lines = lines[:next(i for i, x in enumerate(lines) if "─ Examples ─" in x)]  # the flags
    # 198 before the panels; the inner-loop panel adds ~20, the objectives' and
    # RaT-BPTT's later flags 5, trajectory matching's 3, gradient matching's 4, --init-from 1
    assert len(lines) <= 133
    titles = [i for i, line in enumerate(lines) if line.startswith("╭─ ")]
    # Usage, presets, the synthetic set, model and init, and the budget: one screenful.
    assert titles[panel_titles(lines).index("Data")] < 57
    assert len(help_lines(monkeypatch, "distill", 160)) < len(lines)


def test_each_default_is_shown_once_and_flags_have_no_type(monkeypatch):
    for command in COMMANDS:
        text = "\n".join(help_lines(monkeypatch, command, 200))
        assert "(default" not in text and "Default:" not in text, command
        assert "<bool>" not in text and "<int>" not in text, command
        params = typer.main.get_command(app).commands[command].params
        shown = [_docs.default(p) for p in params if _docs.default(p) is not None]
        assert text.count("[default: ") == len(shown), command
        for value in shown:
            assert f"[default: {value}]" in text, (command, value)


def test_distill_help_shows_aliases_and_the_config_defaults(monkeypatch):
    text = "\n".join(help_lines(monkeypatch, "distill", 200))
    assert "--images-per-class-per-step, --ipc INT" in text
    assert "--step-lr, --distill-lr FLOAT" in text and "--meta-lr, --lr FLOAT" in text
    assert "--augment AUG" in text and "--batch-nets, --no-batch-nets " in text
    assert "Usage: dd distill [OPTIONS] [DATASET]" in text
    for line in text.splitlines():
        if "--batch-size INT" in line:
            assert line.rstrip(" │").endswith("[default: 1024]")
        if "--batch-nets" in line:
            assert line.rstrip(" │").endswith("[default: on]")


def test_no_config_help_copies_a_default_by_hand():
    for f in config_flags():
        assert "(default" not in f.help and "default:" not in f.help.lower(), f.names[0]


def test_group_help_lists_the_commands(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = run("--help")
    assert r.exit_code == 0 and "<bool>" not in r.stdout
    for command in COMMANDS:
        assert f"│ {command} " in r.stdout


# --- exit codes and one-line errors ---------------------------------------------------

def one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "Usage:" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, line", [
    (["distill", "--step", "3"], "error: no such option --step; did you mean --steps?"),
    (["distill", "--ipcc", "2"], "error: no such option --ipcc; did you mean --ipc?"),
    (["distill", "-x"], "error: no such option -x; see `dd distill --help`"),
    (["distill", "--zzzzzz"], "error: no such option --zzzzzz; see `dd distill --help`"),
    (["--bogus"], "error: no such option --bogus; see `dd --help`"),
    (["evl"], "error: no such command 'evl'; did you mean 'eval'?"),
    (["pretrain"], "error: missing argument DATASET; see `dd pretrain --help`"),
    (["export", "b.safetensors"], "error: missing option --format; see `dd export --help`"),
    (["distill", "mnist", "extra"], "error: got unexpected extra argument(s) (extra)"),
    (["distill", "--ipc"], "error: option '--ipc' requires an argument"),
])
def test_click_usage_errors_are_one_line_and_exit_2(args, line):
    assert one_line(run(*args), 2) == line


@pytest.mark.parametrize("flag, value", [("--steps", "many"), ("--ipc", "1.5"),
                                         ("--meta-lr", "fast"), ("--nproc", "")])
def test_values_of_the_wrong_type_exit_2(flag, value):
    line = one_line(run("distill", flag, value), 2)
    assert line.startswith(f"error: invalid value for {flag.replace('--ipc', '--images-per-class-per-step')}: ")


class Colour(str, Enum):
    red = "red"
    blue = "blue"


def test_a_bad_choice_is_one_line_and_exit_2():
    # No dd flag is a Click choice today (choices are checked with the config, so a
    # file and a flag get the same message); a future one gets the same one line.
    toy = _Typer(cls=_Group, add_completion=False)

    @toy.command("paint")
    def paint(colour: Colour = Colour.red) -> None:
        typer.echo(colour.value)

    @toy.command("other")
    def other() -> None:
        pass

    r = runner.invoke(toy, ["paint", "--colour", "green"])
    line = one_line(r, 2)
    assert line.startswith("error: invalid value for --colour: ") and "green" in line
    assert runner.invoke(toy, ["paint", "--colour", "blue"]).stdout == "blue\n"


@pytest.mark.parametrize("args, code, needle", [
    (["--preset", "paper-imagenet"], 2, "unknown preset 'paper-imagenet'"),
    (["--init-mode", "sideways"], 2, "--init-mode must be one of fixed, random"),
    (["--objective", "poison"], 2, "--objective must be one of distill, adapt, attack"),
    (["--steps", "0"], 2, "--steps must be a positive integer"),
    (["--ipc", "0"], 2, "--images-per-class-per-step must be a positive integer"),
    (["--model", "resnet9000"], 2, "unknown model 'resnet9000'"),
    (["imagenet-9000"], 2, "unknown dataset 'imagenet-9000'"),
    (["--config", "{missing}"], 2, "can't read config file"),
    (["--config", "{bad_value}"], 2, "--decay-factor must be in (0, 1]"),
    (["--config", "{bad_key}"], 2, "unknown key(s) stepz in config.synth"),
    (["--resume", "{missing}"], 1, "no run folder"),
    (["--data-root", "{empty}"], 1, "train-images-idx3-ubyte"),
])
def test_distill_errors_exit_2_for_usage_and_1_at_run_time(tmp_path, fixture_root, args, code,
                                                         needle):
    (tmp_path / "bad_value.toml").write_text("[optim]\ndecay_factor = 2.0\n")
    (tmp_path / "bad_key.toml").write_text("[synth]\nstepz = 2\n")
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty",
             "bad_value": tmp_path / "bad_value.toml", "bad_key": tmp_path / "bad_key.toml"}
    args = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    # A small valid run, then the flag under test, which wins being last.
    r = run("distill", "--data-root", fixture_root, "--iterations", "1", "--steps", "1",
            "--epochs", "1", "--batch-size", "32", "-o", tmp_path / "x.safetensors", "--quiet",
            *args)
    assert needle in one_line(r, code)


def test_a_real_process_prints_one_line_and_exits_2_or_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DDCLI_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "COLUMNS": "80"}
    typo = subprocess.run([sys.executable, "-m", "ddcli", "distill", "--step", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr == "error: no such option --step; did you mean --steps?\n"
    missing = subprocess.run([sys.executable, "-m", "ddcli", "distill", "mnist", "--data-root",
                              str(tmp_path), "-o", str(tmp_path / "x.safetensors"), "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.splitlines()) == 1 and missing.stderr.startswith("error: ")
    shown = subprocess.run([sys.executable, "-m", "ddcli", "distill", "--help"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "Usage: python -m ddcli distill" in shown.stdout
    assert max(map(len, shown.stdout.splitlines())) <= 80


# --- examples ---------------------------------------------------------------------------

def _unknown_flags(example, command):
    """The flags of an example line that ``command`` doesn't take."""
    own = {name for p in command.params if p.param_type_name == "option"
           for name in _docs.names(p)}
    words = shlex.split(example, comments=True)
    return [w.split("=", 1)[0] for w in words[2:]
            if w.startswith("-") and w.split("=", 1)[0] not in own]


def test_every_command_ends_its_help_with_examples_whose_flags_exist(monkeypatch):
    commands = typer.main.get_command(app).commands
    assert set(COMMANDS) <= set(commands)
    for name, command in commands.items():
        lines = help_lines(monkeypatch, name, 200)
        start = next((i for i, x in enumerate(lines) if "─ Examples ─" in x), None)
        assert start is not None, f"dd {name} --help has no Examples"
        assert lines[-1].startswith("╰"), f"dd {name} --help: Examples are not last"
        shown = [x.strip("│ ") for x in lines[start:]]
        found = _docs.examples(command)
        assert 1 <= len(found) <= 4 and all(x in shown for x in found), (name, found)
        flags_shown = "\n".join(lines[:start])
        for example in found:
            assert example.split()[:2] == ["dd", name], example  # its own command's examples
            assert _unknown_flags(example, command) == [], example
            for word in shlex.split(example, comments=True):
                if word.startswith("--"):
                    assert word in flags_shown, f"{word} is not in dd {name} --help"


def test_an_example_with_a_flag_that_does_not_exist_is_caught():
    export = typer.main.get_command(app).commands["export"]
    assert _unknown_flags("dd export m.safetensors -f pt --fake 1 --out=x.pt", export) == [
        "--fake"]


def test_help_names_come_from_the_registries(monkeypatch):
    # {models} and {datasets} in help texts become the registries' names when shown.
    from ddcli.data import list_datasets
    from ddcli.models import list_models

    for command in ("distill", "pretrain"):
        text = " ".join(" ".join(help_lines(monkeypatch, command, 200)).split())
        assert "{models}" not in text and "{datasets}" not in text
        assert ", ".join(list_models()) in text, command
        assert ", ".join(list_datasets()) in text, command
    assert ", ".join(list_models()) in _readme.distill_flag_table()
