"""The subcommands, one module each, mounted on the app when first asked for.

`dd distill ...` imports `ddcli.cli.distill` (and torch with it) only; `dd --version`
imports none and `dd --help` reads each command's one-line summary from its module's
source, so neither waits for torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

# In the order `dd --help` lists them; a new command's module goes here.
COMMANDS = {
    "distill": "ddcli.cli.distill",
    "export": "ddcli.cli.export",
    "visualize": "ddcli.cli.visualize",
    "pretrain": "ddcli.cli.pretrain",
    "data": "ddcli.cli.data",
    "eval": "ddcli.cli.eval",
}


def summary(name: str) -> str:
    """The docstring of the function that ``@app.command(name)`` decorates, read from
    its module's source without importing the module."""
    source = Path(importlib.util.find_spec(COMMANDS[name]).origin).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and any(_mounts(d, name) for d in node.decorator_list):
            return ast.get_docstring(node) or ""
    raise LookupError(f"{COMMANDS[name]} has no @app.command({name!r})")


def _mounts(decorator: ast.expr, name: str) -> bool:
    return (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "command" and bool(decorator.args)
            and isinstance(decorator.args[0], ast.Constant) and decorator.args[0].value == name)


class LazyCommands(MutableMapping):
    """A Click group's ``commands``: every name in ``COMMANDS``, built on first lookup.

    Click and Typer read a group's commands through this mapping (lookup, the names for
    "did you mean", the listing), so the group behaves as if all were mounted.
    """

    def __init__(self, built: MutableMapping[str, Any], app: Any) -> None:
        self._built = dict(built)
        self._app = app

    def is_built(self, name: str) -> bool:
        return name in self._built

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = self._build(name)
        return self._built[name]

    def _build(self, name: str) -> Any:
        import typer.main

        importlib.import_module(COMMANDS[name])
        info = next(i for i in self._app.registered_commands if i.name == name)
        return typer.main.get_command_from_info(
            info, pretty_exceptions_short=self._app.pretty_exceptions_short,
            rich_markup_mode=self._app.rich_markup_mode)

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._built if name not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._built))
