"""Your own model: ``path/to/file.py:Factory`` or ``package.module:Factory``.

The factory is called with keyword arguments ``in_channels``, ``num_classes`` and
``image_size`` (and any ``model.kwargs`` of the config) and returns an ``nn.Module``.
A file is named by its absolute path in the model's spec, so a bundle made from it
rebuilds from any working directory as long as the file stays where it was.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from ddcli.errors import ConfigError, ModelError, UnknownModelError

# Loaded files by absolute path and modification time: eval builds a model per net.
_LOADED: dict[tuple[str, int], Any] = {}


def is_user_model(name: str) -> bool:
    """Whether ``name`` names a factory (``FILE.py:NAME`` or ``MODULE:NAME``), not a registered model."""
    return isinstance(name, str) and ":" in name


def canonical_name(name: str) -> str:
    """``name`` with a file given by its absolute path (what the spec records)."""
    where, factory = _split(name)
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{factory}"
    return f"{where}:{factory}"


def label(name: str) -> str:
    """A short name fit for a file name: the factory's name for your own model."""
    return name.rsplit(":", 1)[-1] if is_user_model(name) else name


def load_factory(name: str) -> Callable[..., Any]:
    """The callable that ``name`` names.

    Raises:
        ConfigError: ``name`` is not ``FILE.py:NAME`` or ``MODULE:NAME``.
        UnknownModelError: no such module, or it has no callable ``NAME``.
        ModelError: the file is missing, or running it (or the module) failed.
    """
    where, factory = _split(name)
    module = _load_file(where) if where.endswith(".py") else _load_module(where)
    found = getattr(module, factory, None)
    if not callable(found):
        what = "has no" if found is None else "has a non-callable"
        raise UnknownModelError(f"model {name!r}: {where} {what} {factory!r} "
                                "(a class or function returning an nn.Module)")
    return found


def _split(name: str) -> tuple[str, str]:
    where, _, factory = name.rpartition(":")
    if not where or not factory.isidentifier():
        raise ConfigError(f"model {name!r}: give your own model as FILE.py:FACTORY or "
                          "MODULE:FACTORY (e.g. nets.py:TinyNet)")
    return where, factory


def _load_file(where: str) -> Any:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"model file {where} not found (a bundle records the file's absolute "
                         "path; if it moved, pass --model NEW/PATH.py:FACTORY)")
    key = (str(path), path.stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    # A module name of its own per file, so that two files called net.py don't collide.
    module_name = "ddcli_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"model file {where} can't be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelError(f"model file {where} failed to import: {_one_line(exc)}") from None
    _LOADED[key] = module
    return module


def _load_module(where: str) -> Any:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and where.startswith(exc.name):
            raise UnknownModelError(f"model {where!r}: no module named {exc.name!r} (a file "
                                    "needs its .py suffix)") from None
        raise ModelError(f"module {where} failed to import: {_one_line(exc)}") from None
    except Exception as exc:
        raise ModelError(f"module {where} failed to import: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
