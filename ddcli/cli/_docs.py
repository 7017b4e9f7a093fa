"""How dd documents its flags on the ``--help`` screen (``_readme`` reuses it for the README).

The screen is drawn from the commands' Click parameters, which `dd distill` generates
from the config's field metadata (``ddcli.config``), so it can't drift from the code.
It keeps Typer's look (usage, description, Rich panels) with its own layout:
one name column for every panel, as wide as makes the screen shortest, the rest for
the description; each default shown once; no type for a flag that takes no value.

A command's epilog is its examples, drawn last in an "Examples" panel: each a
``# what it does`` line over a ``dd ...`` line (``examples`` reads the commands back).
"""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from rich.console import Console, Group
from rich.highlighter import RegexHighlighter
from rich.padding import Padding
from rich.panel import Panel
from rich.text import Text
from rich.theme import Theme

METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}

_THEME = Theme({"option": "bold cyan", "switch": "bold green", "metavar": "bold yellow",
                "usage": "yellow"})


class _Highlighter(RegexHighlighter):
    """Colours flags mentioned in text, as Typer's help does."""

    highlights = [r"(^|[^\w-])(?P<switch>-\w)(?![\w-])",
                  r"(^|[^\w-])(?P<option>--[\w-]+)", r"(?P<usage>^Usage: )"]


_highlight = _Highlighter()


# --- one parameter as a row: names, value placeholder, help, default -------------------

def names(param: Any) -> list[str]:
    """A parameter's spellings as typed, short ones first: ``['-o', '--out']``."""
    if param.param_type_name == "argument":
        return [param.metavar or param.name.upper()]
    opts = sorted(param.opts, key=lambda o: o.startswith("--"))
    return opts + list(getattr(param, "secondary_opts", []))


def metavar(param: Any) -> str | None:
    """The value's placeholder (``INT``, ``DIR``); None for a flag that takes no value."""
    if getattr(param, "is_flag", False):
        return None
    if param.metavar:
        return param.metavar
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", str)
    if get_origin(annotation) is list:  # a repeatable option: the placeholder of one value
        annotation = (get_args(annotation) or (str,))[0]
    if inspect.isclass(annotation) and issubclass(annotation, Enum):
        return "|".join(str(m.value) for m in annotation)
    return METAVARS.get(annotation, "TEXT") if inspect.isclass(annotation) else "TEXT"


def default(param: Any) -> str | None:
    """The default as shown, once: ``show_default`` when it is text, else the value."""
    shown = getattr(param, "show_default", True)
    if isinstance(shown, str):
        return shown
    value = param.default
    if not shown or value is None or callable(value) or value == [] or value == ():
        return None
    if isinstance(value, bool):
        # A plain flag is off unless given; a --x/--no-x pair says which side is on.
        return "on" if value and getattr(param, "secondary_opts", None) else None
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def panels(params: list[Any]) -> dict[str, list[Any]]:
    """Visible parameters by help panel: arguments, options without a panel, then the
    panels in order of first appearance. The help option joins the last panel when
    every other option has one."""
    out: dict[str, list[Any]] = {"Arguments": [], "Options": []}  # Typer's order: these first
    for kind, title in (("argument", "Arguments"), ("option", "Options")):
        for p in params:
            if p.param_type_name == kind and not getattr(p, "hidden", False):
                out.setdefault(getattr(p, "rich_help_panel", None) or title, []).append(p)
    out = {title: params for title, params in out.items() if params}
    options = out.get("Options", [])
    if len(options) == 1 and options[0].name == "help" and len(out) > 1:
        del out["Options"]
        list(out.values())[-1].append(options[0])
    return out


def with_names(text: str) -> str:
    """``text`` with ``{models}`` and ``{datasets}`` replaced by the registries' names.

    Help texts name them this way so that no list is typed by hand; the registries
    (which import torch) are only imported when a help text asks for them.
    """
    if "{models}" in text:
        from ddcli.models import list_models

        text = text.replace("{models}", ", ".join(list_models()))
    if "{datasets}" in text:
        from ddcli.data import list_datasets

        text = text.replace("{datasets}", ", ".join(list_datasets()))
    return text


# --- the help screen -------------------------------------------------------------------

def print_help(command: Any, ctx: Any) -> None:
    """Print ``command``'s ``--help`` (what ``TyperCommand.format_help`` would, laid out
    for a readable description column at any width)."""
    console = Console(theme=_THEME, highlighter=_highlight)
    console.print(Padding(_highlight(Text(command.get_usage(ctx))), 1), style="bold")
    text = inspect.cleandoc(command.help or "").partition("\f")[0]
    for i, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
        console.print(Padding(Text(" ".join(paragraph.split()), style="" if i == 0 else "dim"),
                              (0, 1, 1, 1)))
    groups = panels(command.get_params(ctx))
    rows = {title: [(_name_cell(p), *_help_cell(p)) for p in params]
            for title, params in groups.items()}
    if hasattr(command, "summaries"):  # `dd --help`: the subcommands, a line each
        rows["Commands"] = [(Text(name, style="option"), Text(_first_line(help)), Text())
                            for name, help in command.summaries()]
    inner = console.width - 4  # inside the panel's border and padding
    # The name column takes the width that makes the screen shortest: a name longer
    # than it gets a line of its own (as argparse does), the description keeps the rest.
    widths = range(12, max(13, inner // 2))
    width = min(widths, key=lambda w: sum(len(_layout(console, r, w, inner))
                                          for r in rows.values()))
    for title, panel_rows in rows.items():
        lines = _layout(console, panel_rows, width, inner)
        console.print(Panel(Group(*lines), title=title, title_align="left", border_style="dim"))
    if command.epilog:
        lines = [Text(line, style="dim") if line.startswith("#") else _highlight(Text(line))
                 for line in inspect.cleandoc(command.epilog).splitlines() if line.strip()]
        console.print(Panel(Group(*lines), title="Examples", title_align="left",
                            border_style="dim"))


def examples(command: Any) -> list[str]:
    """The ``dd ...`` command lines of ``command``'s Examples (its epilog)."""
    return [line.strip() for line in (command.epilog or "").splitlines()
            if line.strip().startswith("dd ")]


def _layout(console: Console, rows: list[tuple[Text, Text, Text]], width: int,
            inner: int) -> list[Text]:
    """The lines of a panel: names padded to ``width``, descriptions wrapped beside them,
    and the default kept whole (on the last line if it fits, else on its own)."""
    lines = []
    room = max(inner - width - 2, 10)
    for name, help, tags in rows:
        wrapped = list(help.wrap(console, room)) if help.plain else []
        if tags.plain:
            if wrapped and wrapped[-1].cell_len + 2 + tags.cell_len <= room:
                wrapped[-1].append_text(Text("  ").append_text(tags))
            else:
                wrapped += list(tags.wrap(console, room))
        if name.cell_len > width:
            lines.append(name)
            name = Text()
        for i, line in enumerate(wrapped or [Text()]):
            left = name if i == 0 else Text()
            lines.append(Text.assemble(left, " " * (width + 2 - left.cell_len), line))
    return lines


def _first_line(text: str | None) -> str:
    return " ".join(inspect.cleandoc(text or "").partition("\n\n")[0].split())


def _name_cell(param: Any) -> Text:
    if param.param_type_name == "argument":
        return Text(names(param)[0], style="metavar")
    cell = _highlight(Text(", ".join(names(param))))
    value = metavar(param)
    if value:
        cell.append(" " + value, style="metavar")
    return cell


def _help_cell(param: Any) -> tuple[Text, Text]:
    """The description, and its ``[default: ...]`` / ``[required]`` tags."""
    tags = Text(style="dim")
    shown = default(param)
    if shown is not None:
        tags.append(f"[default: {shown}]")
    if param.required:
        tags.append(" [required]" if tags.plain else "[required]", style="red")
    return _highlight(Text(" ".join(with_names(param.help or "").split()))), tags
