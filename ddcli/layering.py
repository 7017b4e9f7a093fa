"""Layering a run's settings: a new run's defaults, preset, file and flags; a resumed
run's stored config and the few settings a resume may change.

Each layer is a partial tree shaped like ``config.json``; ``build_config`` and
``resumed_config`` merge them into one validated ``DistillConfig``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ddcli.config import DistillConfig, flag_name, resumable_settings
from ddcli.errors import ConfigError
from ddcli.infra.sections import load_config_file, merge_dicts
from ddcli.presets import get_preset

# Settings a resumed run may change (flag(resumable=True) in ddcli.config); everything
# else must stay as the run began.
RESUMABLE_OVERRIDES = resumable_settings()


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


def resumed_config(stored: dict[str, Any], overrides: dict[str, Any] | None = None
                   ) -> DistillConfig:
    """The config a resumed run continues with: ``stored`` (its ``config.json``) with
    ``overrides`` of the settings a resume may change.

    An override of any other setting must equal the stored value. A real-epochs budget
    replaces the stored iterations budget (``apply_real_epochs_rule``), and a data root
    recorded on another machine is looked for here (``resumed_data_root``).

    Raises:
        ConfigError: an override of a setting that can't change, or a bad value.

    Example:
        >>> run = build_config(overrides={"optim": {"iterations": 10}}).to_dict()
        >>> resumed_config(run, {"optim": {"iterations": 20}}).optim.iterations
        20
    """
    from ddcli.data import resumed_data_root  # the dataset registry (imports torch)

    overrides = overrides or {}
    # Through from_dict and back: run folders from earlier versions use older key names.
    merged = DistillConfig.from_dict(stored).to_dict()
    recorded = merged["data"]["data_root"]
    for section, values in apply_real_epochs_rule(overrides).items():
        for key, value in values.items():
            if (section, key) not in RESUMABLE_OVERRIDES:
                if merged.get(section, {}).get(key) != value:
                    raise ConfigError(
                        f"{flag_name(section, key)} can't change when resuming; the run was "
                        f"made with {merged.get(section, {}).get(key)!r}")
                continue
            merged.setdefault(section, {})[key] = value
    merged["data"]["data_root"] = resumed_data_root(
        recorded, overrides.get("data", {}).get("data_root"))
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
