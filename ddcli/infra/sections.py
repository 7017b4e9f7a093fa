"""Config sections: dataclasses read strictly from dicts, whose fields can be flags.

``ddcli.config`` builds its tree from ``Section`` dataclasses and marks each field that
`dd distill` can set with ``flag(...)`` metadata. ``collect_flags`` reads that metadata
back as ``Flag`` records, from which the CLI builds its options, ``--help`` and the
README's flag table.
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ddcli.errors import ConfigError

_FLAG = "ddcli.flag"  # the metadata key flag() writes
VALUE_TYPES = (bool, int, float, str)


class Section:
    """Mixin giving dataclasses a strict ``from_dict`` and a plain ``to_dict``.

    A field whose default factory is a Section is a nested section; ``RENAMED`` maps
    keys of earlier versions to their current names, so old files and run folders load.
    """

    RENAMED: dict[str, str] = {}
    IGNORED: frozenset[str] = frozenset()  # keys written beside the settings (provenance)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Section) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config"):
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table/object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        data = {k: v for k, v in cls.renamed(data).items() if k not in cls.IGNORED}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(known)}"
            )
        kwargs = {}
        for name, value in data.items():
            sub = known[name].default_factory
            is_section = isinstance(sub, type) and issubclass(sub, Section)
            kwargs[name] = sub.from_dict(value, where=f"{where}.{name}") if is_section else value
        return cls(**kwargs)

    @classmethod
    def renamed(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with the keys in ``RENAMED`` given their current names."""
        return {cls.RENAMED.get(k, k): v for k, v in data.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def flag(help: str, *, panel: str, name: str | None = None, aliases: tuple[str, ...] = (),
         resumable: bool = False, choices: tuple[str, ...] = (), metavar: str | None = None,
         default_text: str | None = None, argument: bool = False) -> dict[str, Any]:
    """Field metadata that makes a config field a command-line flag.

    Args:
        help: one sentence for ``--help`` and the README. The default is added there,
            from the field's default, so it isn't written here.
        panel: the ``--help`` panel the flag is listed in.
        name: the flag, when it isn't ``--`` plus the field's name in kebab case.
        aliases: other spellings that also work (``--ipc``, earlier versions' names).
        resumable: a resumed run may change it (budget, logging, speed, memory);
            everything else must stay as the run began.
        choices: the allowed values; ``DistillConfig.validate`` refuses others.
        metavar: the value's placeholder in ``--help`` (default: from the type).
        default_text: what the default means, where the value says nothing by itself
            (None meaning "the paper's model for the dataset").
        argument: the command's positional argument rather than an option.

    Example:
        >>> from dataclasses import field
        >>> steps: int = field(default=10, metadata=flag("GD steps.", panel="Synthetic set"))
    """
    return {_FLAG: dict(help=help, panel=panel, name=name, aliases=tuple(aliases),
                        resumable=resumable, choices=tuple(choices), metavar=metavar,
                        default_text=default_text, argument=argument)}


@dataclass(frozen=True)
class Flag:
    """A field's ``flag()`` metadata, resolved against the field it sits on."""

    section: str  # the value lives at cfg.<section>.<key>
    key: str
    names: tuple[str, ...]  # the flag's name first, then its aliases
    type: type  # one of VALUE_TYPES (None stripped from an Optional)
    default: Any
    help: str
    panel: str
    resumable: bool
    choices: tuple[str, ...]
    metavar: str | None
    default_text: str | None
    argument: bool

    @property
    def dest(self) -> str:
        """The Python name of the flag's value: ``--init-mode`` -> ``init_mode``."""
        return self.names[0].lstrip("-").replace("-", "_")

    @property
    def default_label(self) -> str | None:
        """The default as ``--help`` and the README show it; None: nothing to show."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.default is False:
            return None
        if self.default is True:
            return "on"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def collect_flags(root: type) -> tuple[Flag, ...]:
    """The flags of a dataclass whose fields are sections (dataclasses), in field order."""
    return tuple(f for section in fields(root)
                 for f in field_flags(section.default_factory, section.name))  # type: ignore[arg-type]


def field_flags(cls: type, section: str = "") -> tuple[Flag, ...]:
    """The flags of one flat dataclass (a section, or a config such as ``EvalConfig``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        spec = dict(f.metadata.get(_FLAG) or {})
        if not spec:
            continue  # settable in config files only
        name = spec.pop("name") or "--" + f.name.replace("_", "-")
        out.append(Flag(section=section, key=f.name, names=(name, *spec.pop("aliases")),
                        type=_value_type(hints[f.name], f.name), default=f.default, **spec))
    return tuple(out)


def _value_type(hint: Any, name: str) -> type:
    """int for ``int`` and ``int | None``; a type a flag can't carry is a bug, said early."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(args) != 1 or args[0] not in VALUE_TYPES:
        raise TypeError(f"flag() field {name!r} must be bool, int, float or str, or None-able; "
                        f"it is {hint}")
    return args[0]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a nested dict (not yet validated)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"can't read config file {path}: {exc.strerror or exc}") from None
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"config file {path} must be TOML (.toml) or JSON (.json), "
                          f"named for its format; got {path.suffix or 'no suffix'}")
    try:
        return tomllib.loads(text.decode()) if kind == "TOML" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from None


def merge_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: values in ``override`` win; nested tables merge."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out
