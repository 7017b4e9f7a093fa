"""Docs stay true: every command documented with help text, every distill flag in the README."""

from pathlib import Path

import typer.main

from ddcli.cli import app

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


def test_every_distill_flag_is_in_the_readme():
    distill = _commands()["distill"]
    for param in distill.params:
        if param.param_type_name != "option":
            continue
        long = [o for o in param.opts if o.startswith("--")][0]
        assert f"`{long}" in README, f"{long} is missing from README's distill flag list"


def test_readme_commands_match_ci():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "test-command" in ci
    assert "pytest" in README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
