"""Docs stay true: every command documented with help text, the README's flag table
generated from the config, the README's test command the one CI runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from ddcli.cli import _docs, _readme, app
from ddcli.config import DistillConfig, config_flags

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def _commands():
    group = typer.main.get_command(app)
    return group.commands


def test_every_command_has_help_and_docs():
    commands = _commands()
    assert {"distill", "eval", "visualize", "export"} <= set(commands)
    for name, cmd in commands.items():
        assert (cmd.help or "").strip(), f"{name} has no help text"
        assert f"dd {name}" in DOCS, f"`dd {name}` is not documented in README.md or docs/"
        for param in cmd.params:
            if getattr(param, "hidden", False) or not getattr(param, "opts", None):
                continue
            if param.param_type_name == "option":
                assert (param.help or "").strip(), f"dd {name} {param.opts[0]} has no help"


def test_readme_flag_table_is_generated_from_the_config():
    # The table between the markers is distill_flag_table()'s output, so it lists every
    # flag with the help and default of the code; after changing a flag, regenerate it
    # with `python -m ddcli.cli._readme`.
    section = README.split(_readme.TABLE_START)[1].split(_readme.TABLE_END)[0].strip()
    assert section == _readme.distill_flag_table(), \
        "README's distill flag table is stale: run `python -m ddcli.cli._readme`"


def _shown(value) -> str:
    # How a default reads in the README, written out here rather than taken from the
    # flag metadata that the table is drawn from.
    if value is True:
        return "on"
    if value is None or value is False:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_readme_flag_table_lists_every_distill_flag_with_the_configs_default():
    # The README's own rows against the command's parameters and DistillConfig()'s
    # actual values, so a table drawn wrong (a flag left out, a default the config
    # doesn't use) fails even when it was freshly regenerated.
    section = README.split(_readme.TABLE_START)[1].split(_readme.TABLE_END)[0]
    rows = {}
    for line in section.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        for spelled in cells[0].split(", "):
            rows[spelled.strip("`")] = cells
    for param in _commands()["distill"].params:
        for name in _docs.names(param):
            assert name in rows, f"{name} is missing from the README's distill flag table"
    cfg = DistillConfig()
    for f in config_flags():
        value = getattr(getattr(cfg, f.section), f.key)
        shown = rows[f.metavar if f.argument else f.names[0]][1].replace("&lt;", "<")
        if f.default_text is None:
            assert shown == _shown(value), (f.names[0], shown, value)
        else:  # words for what the value means, which must start with the value itself
            assert shown == f.default_text and shown.startswith(_shown(value)), (f.names[0], shown)


def test_readme_table_is_replaced_between_the_markers_only():
    text = f"intro\n{_readme.TABLE_START}\nold\n{_readme.TABLE_END}\noutro\n"
    assert _readme.readme_with_table(text, "| new |") == (
        f"intro\n{_readme.TABLE_START}\n| new |\n{_readme.TABLE_END}\noutro\n")
    with pytest.raises(ValueError):
        _readme.readme_with_table("no markers", "| new |")


def test_readme_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "test-command" in ci
    assert "pytest" in README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]


def test_pytest_prints_its_closing_summary(tmp_path):
    # CI and people read the closing "N passed" line; pytest drops it from -qq on, so
    # addopts and the README's test command together may hold at most one -q.
    pyproject = (ROOT / "pyproject.toml").read_text()
    command = README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    quiet = [w for w in command.split() + re.findall(r'addopts\s*=\s*"([^"]*)"', pyproject)
             if re.fullmatch(r"-q+|--quiet", w)]
    assert sum(w.count("q") if w != "--quiet" else 1 for w in quiet) <= 1, quiet
    # and with this project's pytest settings, `pytest -q` ends with it
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(tmp_path / "test_one.py")],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b1 passed\b", out.stdout.strip().splitlines()[-1]), out.stdout
