"""The README's `dd distill` flag table, drawn from the same parameters as ``--help``.

``python -m ddcli.cli._readme`` rewrites it between its markers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ddcli.cli._docs import default, names, panels, with_names

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_START, TABLE_END = "<!-- distill-flags -->", "<!-- /distill-flags -->"


def flag_table(command: Any) -> str:
    """The Markdown flag table of ``command``, a bold row heading each help panel."""
    rows = ["| flag | default | what it does |", "|---|---|---|"]
    for title, params in panels(list(command.params)).items():
        rows.append(f"| **{title}** | | |")
        for p in params:
            spelled = ", ".join(f"`{n}`" for n in names(p))
            rows.append(f"| {spelled} | {_md(default(p) or '')} | {_md(with_names(p.help or ''))} |")
    return "\n".join(rows)


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def distill_flag_table() -> str:
    """`dd distill`'s flag table, as the README holds it between its markers."""
    import typer.main

    from ddcli.cli import app

    return flag_table(typer.main.get_command(app).commands["distill"])


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the flag-table markers replaced by ``table``."""
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} section")
    return pattern.sub(lambda _: f"{TABLE_START}\n{table}\n{TABLE_END}", readme, count=1)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else README
    path.write_text(readme_with_table(path.read_text(), distill_flag_table()))
    print(f"updated the flag table in {path}")
