"""Flags shared by several subcommands, as Annotated aliases, and the config's flags.

``config_options`` gives `dd distill` one option per ``flag()`` field of the config
(``ddcli.config``), so a new setting needs no code here.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer

from ddcli.config import OUTPUT, config_flags
from ddcli.errors import ConfigError
from ddcli.infra.sections import Flag


def _from_config(section: str, key: str) -> Flag:
    return next(f for f in config_flags() if (f.section, f.key) == (section, key))


# Worded once, in the config, for every command that takes them.
_ROOT = _from_config("data", "data_root")
_DEVICE = _from_config("run", "device")
_SEED = _from_config("init", "seed")
_DATASET = _from_config("data", "dataset")
_MODEL = _from_config("model", "name")
DataRoot = Annotated[Optional[Path], typer.Option(
    "--data-root", help=_ROOT.help, metavar=_ROOT.metavar, show_default=_ROOT.default_label)]
Device = Annotated[Optional[str], typer.Option(
    "--device", help=_DEVICE.help, metavar=_DEVICE.metavar, show_default=_DEVICE.default_label)]
Seed = Annotated[Optional[int], typer.Option(
    "--seed", help=_SEED.help, show_default=_SEED.default_label)]
# `dd pretrain`'s DATASET and --model, as `dd distill` words them ({datasets} and
# {models} become the registries' names in --help).
DatasetArg = Annotated[str, typer.Argument(help=_DATASET.help, show_default=False)]
Model = Annotated[Optional[str], typer.Option(
    "--model", help=_MODEL.help, metavar=_MODEL.metavar, show_default=_MODEL.default_label)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.",
                                     rich_help_panel=OUTPUT)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.",
                                    rich_help_panel=OUTPUT)]


def config_options(panels: Sequence[str], flags: Sequence[Flag] | None = None, *,
                   negatable: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command also takes every config flag, into its ``**flags``.

    Typer reads a command's parameters from ``inspect.signature``, so the decorated
    function gets a signature with one keyword parameter per ``Flag`` (default None:
    "not given", which keeps the layering to ``build_config``), beside its own. All of
    them are ordered by their ``--help`` panel as listed in ``panels``; panels not
    listed follow, in the order they first appear.

    Args:
        panels: the order of the ``--help`` panels.
        flags: the flags to add; default ``config_flags()``, the `dd distill` ones.
        negatable: a bool flag is a ``--x/--no-x`` pair, so that a layer's True (a
            preset's) can be turned off; False: a plain ``--x`` switch.
    """
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            raise TypeError(f"{func.__name__} needs a **flags parameter for the config's flags")
        ctx = [p for p in sig.parameters.values() if p.annotation is typer.Context]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
               if p.kind is not p.VAR_KEYWORD and p.annotation is not typer.Context]
        params = own + [_parameter(f, negatable)
                        for f in (config_flags() if flags is None else flags)]
        order = list(panels)
        for p in params:
            if _panel(p) not in order:
                order.append(_panel(p))
        params.sort(key=lambda p: order.index(_panel(p)))
        func.__signature__ = sig.replace(parameters=ctx + params)  # type: ignore[attr-defined]
        return func
    return decorate


def _parameter(f: Flag, negatable: bool = True) -> inspect.Parameter:
    if f.argument:
        info: Any = typer.Argument(help=f.help, metavar=f.metavar,
                                   show_default=f.default_label or False)
    else:
        # --augment/--no-augment: a preset's True can be turned off again.
        pair = f.type is bool and negatable
        decls = [f"{n}/--no-{n[2:]}" for n in f.names] if pair else list(f.names)
        info = typer.Option(*decls, help=f.help, metavar=f.metavar, rich_help_panel=f.panel,
                            show_default=f.default_label or False)
    if f.type is bool and not negatable:  # a switch: given or not
        return inspect.Parameter(f.dest, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                 annotation=Annotated[bool, info])
    return inspect.Parameter(f.dest, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[f.type], info])


def _panel(p: inspect.Parameter) -> str:
    info = getattr(p.annotation, "__metadata__", (None,))[0]
    if isinstance(info, typer.models.ArgumentInfo):
        return "Arguments"
    return getattr(info, "rich_help_panel", None) or "Options"


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["width=32", "norm=none"]`` -> ``{"width": 32, "norm": "none"}`` (JSON values, else
    strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-arg takes KEY=VALUE (e.g. width=32), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
