"""`dd --version` and `dd --help` start without torch; the lazily mounted commands
behave as if all were mounted."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from ddcli import __version__
from ddcli.cli import app
from ddcli.cli._commands import COMMANDS, summary

ROOT = Path(__file__).resolve().parents[1]

# Runs ddcli/__main__.py as `python -m ddcli ARGS` does, then reports what it imported.
_PROBE = """
import json, runpy, sys
args, modules = map(json.loads, sys.argv[1:])
sys.argv = ["dd", *args]
try:
    runpy.run_module("ddcli", run_name="__main__")
    code = None
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))
commands = sorted(m for m in sys.modules if m in modules)
print(json.dumps({"code": code, "loaded": loaded, "commands": commands}))
"""


def _probe(*args: str) -> tuple[dict, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args),
                           json.dumps(list(COMMANDS.values()))], env=env,
                          capture_output=True, text=True, timeout=300)
    *printed, report = done.stdout.splitlines()
    return json.loads(report), "\n".join(printed), done.stderr


def test_version_imports_no_torch():
    report, printed, _ = _probe("--version")
    assert report == {"code": 0, "loaded": [], "commands": []}
    assert printed == f"ddcli {__version__}"


def test_help_imports_no_torch_and_lists_every_command():
    report, printed, _ = _probe("--help")
    assert report == {"code": 0, "loaded": [], "commands": []}
    listed = [line.split()[1] for line in printed.splitlines()
              if line.startswith("│ ") and line.split()[1] in COMMANDS]
    assert listed == list(COMMANDS)


def test_a_typo_is_still_matched_against_unmounted_commands():
    report, _, err = _probe("evl")
    assert report == {"code": 2, "loaded": [], "commands": []}
    assert err == "error: no such command 'evl'; did you mean 'eval'?\n"


def test_a_command_mounts_only_its_own_module():
    report, printed, _ = _probe("visualize", "--help")
    assert report["code"] == 0 and report["commands"] == ["ddcli.cli.visualize"]
    assert "Usage: dd visualize" in printed and "--out" in printed


@pytest.mark.parametrize("name", list(COMMANDS))
def test_summaries_read_from_source_match_the_mounted_commands(name):
    command = typer.main.get_command(app).commands[name]
    assert summary(name) == inspect.cleandoc(command.help) != ""


def test_commands_mapping_lists_each_once_in_order():
    group = typer.main.get_command(app)
    assert list(group.commands) == list(COMMANDS) == group.list_commands(None)
    assert len(group.commands) == len(COMMANDS)
    assert group.commands.get("nonesuch") is None


def test_every_command_module_is_in_the_table():
    found = {}
    for path in sorted((ROOT / "ddcli" / "cli").glob("*.py")):
        for name in re.findall(r'^@app\.command\("([\w-]+)"', path.read_text(), re.M):
            found[name] = f"ddcli.cli.{path.stem}"
    assert found == COMMANDS
