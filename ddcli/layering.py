"""Layering a new run's settings: the defaults, then a preset, then a file, then flags.

Each layer is a partial tree shaped like ``config.json``; ``build_config`` merges them
into one validated ``DistillConfig``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ddcli.config import DistillConfig
from ddcli.infra.sections import load_config_file, merge_dicts
from ddcli.presets import get_preset


def apply_real_epochs_rule(layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` with ``optim.iterations`` cleared when it sets ``real_epochs`` alone.

    A budget is iterations or real-data epochs, and iterations wins when both are set.
    So a layer that gives ``real_epochs`` without ``iterations`` (``--preset quick-mnist
    --real-epochs 2``, ``--resume RUN --real-epochs 50``) means "this budget instead":
    it must clear an iterations budget from the layers below it.
    """
    optim = layer.get("optim")
    if isinstance(optim, dict) and "real_epochs" in optim and "iterations" not in optim:
        return {**layer, "optim": {**optim, "iterations": None}}
    return layer


def build_config(*, preset: str | None = None, config_file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> DistillConfig:
    """The config of a new run: the defaults, then a preset, then a file, then overrides.

    Each layer is a partial tree shaped like ``config.json``; a later layer wins key by
    key, and a layer's real-epochs budget replaces the iterations budget below it
    (``apply_real_epochs_rule``). `dd distill` passes its flags as ``overrides``.

    Raises:
        ConfigError: an unknown preset, an unreadable file, an unknown key or a bad value.

    Example:
        >>> cfg = build_config(preset="quick-mnist", overrides={"optim": {"real_epochs": 2}})
        >>> cfg.optim.iterations, cfg.optim.real_epochs
        (None, 2)
    """
    layers = (get_preset(preset) if preset else {},
              load_config_file(config_file) if config_file is not None else {},
              overrides or {})
    merged = DistillConfig().to_dict()
    for layer in layers:
        merged = merge_dicts(merged, apply_real_epochs_rule(_renamed_tree(layer)))
    return DistillConfig.from_dict(merged).validate()


def _renamed_tree(layer: dict[str, Any]) -> dict[str, Any]:
    # Renamed keys are given their current names before merging, or a file's old `lr`
    # and a flag's `meta_lr` would both reach from_dict and the wrong one could win.
    if not isinstance(layer, dict):
        return layer
    sections = {f.name: f.default_factory for f in fields(DistillConfig)}
    return {name: sections[name].renamed(values)  # type: ignore[attr-defined]
            if name in sections and isinstance(values, dict) else values
            for name, values in layer.items()}
