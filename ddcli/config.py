"""The typed configuration tree of a distillation run.

One ``DistillConfig`` describes a run completely. It is written as ``config.json`` into
the run folder and into every bundle, so a result always says how it was made.

It is also the one description of `dd distill`'s flags: each field of its sections
(``ddcli._settings``) that is one carries ``flag()`` metadata (``ddcli.infra.sections``) with its names, help, ``--help`` panel and
whether ``--resume`` may change it. The CLI, its ``--help``, the README's flag table,
``resumable_settings()`` and the layering in ``ddcli.layering.build_config`` are derived
from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError
from .init_modes import draws_fresh_nets, is_pretrained
from .infra.sections import Flag, Section, collect_flags, flag, load_config_file, merge_dicts  # noqa: F401
from ._settings import (  # noqa: F401  (the sections and their choices, named here)
    AUGMENTS, BUDGET, DATA, INIT_IMAGES, INNER, INNER_OPTIMIZERS, META_OPTIMIZERS, MODEL,
    OBJECTIVES, OUTPUT, POOLS, PRECISIONS, SCALE, SYNTH, TRAJECTORY_RATES,
    UNROLL_MEMORY_MODES, WINDOW_SAMPLING, DataConfig, InitConfig, ModelConfig,
    ObjectiveConfig, OptimConfig, RunConfig, SynthConfig)


@dataclass
class DistillConfig(Section):
    """Everything that defines a distillation run.

    Example:
        >>> cfg = DistillConfig.from_dict({"synth": {"steps": 2, "epochs": 1}})
        >>> cfg.synth.steps * cfg.synth.epochs
        2
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: InitConfig = field(default_factory=InitConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # A run folder's config.json also records how the run was made; it reads as a config.
    IGNORED = frozenset({"provenance"})

    @property
    def total_steps(self) -> int:
        """T, the inner steps of one unroll (and the number of learned rates)."""
        return self.synth.unroll_steps or self.synth.steps * self.synth.epochs

    @property
    def passes(self) -> int:
        """E, the passes over the steps: T / S."""
        return self.total_steps // self.synth.steps

    def model_name(self, dataset: str | None = None) -> str:
        """--model, else the dataset's default model (its DatasetInfo); DM's ConvNet for
        distribution and gradient matching."""
        if self.model.name:
            return self.model.name
        if self.objective.kind in ("distribution", "gradient"):
            return "convnet"
        from ddcli.data import default_model  # the dataset registry (imports torch)

        return default_model(dataset or self.data.dataset)

    def validate(self) -> "DistillConfig":
        """Raise ConfigError for values no run could use. Returns self."""
        for f in config_flags():
            value = getattr(getattr(self, f.section), f.key)
            allowed = value in f.choices or (value is None and f.default is None)
            if f.choices and not allowed:
                raise ConfigError(
                    f"{f.names[0]} must be one of {', '.join(f.choices)}, got {value!r}")
        s, o, i, r = self.synth, self.optim, self.init, self.run
        for section, key in (("synth", "steps"), ("synth", "epochs"),
                             ("synth", "images_per_class"), ("data", "batch_size"),
                             ("init", "n_nets"), ("init", "sample_n_nets"), ("run", "nproc")):
            _positive(flag_name(section, key), getattr(getattr(self, section), key))
        for name, value in (("--step-lr", s.step_lr), ("--meta-lr", o.meta_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if not 0 < o.decay_factor <= 1:
            raise ConfigError(f"--decay-factor must be in (0, 1], got {o.decay_factor}")
        if o.decay_every <= 0:
            raise ConfigError(f"--decay-every must be positive, got {o.decay_every}")
        if o.iterations is None:
            if o.real_epochs <= 0:
                raise ConfigError(f"--real-epochs must be positive, got {o.real_epochs}")
        else:
            _positive("--iterations", o.iterations)
        if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
            raise ConfigError("Adam betas must be in [0, 1)")
        if not 0 <= o.meta_momentum < 1:
            raise ConfigError(f"--meta-momentum must be in [0, 1), got {o.meta_momentum}")
        if draws_fresh_nets(i.mode) and i.sample_n_nets > i.n_nets:
            raise ConfigError(
                f"--sample-n-nets ({i.sample_n_nets}) can't exceed --n-nets ({i.n_nets}), the "
                f"inits drawn per iteration; pass --n-nets {i.sample_n_nets} too"
            )
        if is_pretrained(i.mode) and not i.pool:
            raise ConfigError(f"--init-mode {i.mode} needs --pool POOL_DIR (made by `dd pretrain`)")
        if not 0 <= i.pool_holdout < 1:
            raise ConfigError(f"--pool-holdout must be in [0, 1), got {i.pool_holdout}")
        for name in ("checkpoint_every", "snapshot_every", "eval_every", "log_every"):
            if getattr(r, name) < 0:
                raise ConfigError(f"{flag_name('run', name)} must be >= 0")
        if not isinstance(r.batch_nets, bool):
            raise ConfigError(f"run.batch_nets must be true or false, got {r.batch_nets!r}")
        self._validate_methods()
        return self

    def _validate_methods(self) -> None:
        s, d, o, r = self.synth, self.data, self.optim, self.run
        if s.unroll_steps is not None:
            _positive("--unroll-steps", s.unroll_steps)
            if s.unroll_steps % s.steps:
                raise ConfigError(f"--unroll-steps {s.unroll_steps} is not a multiple of "
                                  f"--steps {s.steps}")
        for name, value in (("--inner-batch", s.inner_batch), ("--window", s.window),
                            ("--inner-batch-per-class", s.inner_batch_per_class)):
            if value is not None:
                _positive(name, value)
        if s.inner_batch_per_class is not None:
            if s.inner_batch is not None:
                raise ConfigError("--inner-batch and --inner-batch-per-class are two ways to "
                                  "draw the inner minibatches: give one")
            if s.inner_batch_per_class > s.steps * s.images_per_class:
                raise ConfigError(
                    f"--inner-batch-per-class {s.inner_batch_per_class} exceeds the "
                    f"{s.steps * s.images_per_class} images of each class")
        if not (0 <= s.inner_beta1 < 1 and 0 <= s.inner_beta2 < 1 and s.inner_eps > 0):
            raise ConfigError("synth.inner_beta1 and synth.inner_beta2 must be in [0, 1) "
                              "and synth.inner_eps > 0")
        if o.clip_ema_factor is not None and not (
                math.isfinite(o.clip_ema_factor) and o.clip_ema_factor > 0):
            raise ConfigError(
                f"--clip-ema-factor must be a positive number, got {o.clip_ema_factor}")
        if not 0 <= o.clip_ema_decay < 1:
            raise ConfigError(f"--clip-ema-decay must be in [0, 1), got {o.clip_ema_decay}")
        if s.window is not None and s.window > self.total_steps:
            raise ConfigError(f"--window {s.window} exceeds the {self.total_steps} inner steps")
        if not (0 <= s.inner_momentum < 1 and s.inner_weight_decay >= 0):
            raise ConfigError("--inner-momentum must be in [0, 1) and --inner-weight-decay >= 0")
        if o.label_lr is not None and not (math.isfinite(o.label_lr) and o.label_lr > 0):
            raise ConfigError(f"--label-lr must be a positive number, got {o.label_lr}")
        if not (d.augment in AUGMENTS or str(d.augment).startswith("dsa:")):
            raise ConfigError(f"--augment must be one of {', '.join(AUGMENTS)} or "
                              f"dsa:FAMILY_..., got {d.augment!r}")
        if str(d.augment).startswith("dsa:"):
            from ddcli.core.augment import parse_augment  # raises for unknown families
            try:
                parse_augment(d.augment)
            except ValueError as exc:
                raise ConfigError(f"--augment: {exc}") from None
        if isinstance(d.validation, bool) or not isinstance(d.validation, int) or d.validation < 0:
            raise ConfigError(f"--validation must be a count of images >= 0, got {d.validation!r}")
        if r.keep_best and not (d.validation and r.eval_every):
            raise ConfigError("--keep-best selects on a validation split: it needs "
                              "--validation N and --eval-every K")
        from ddcli.core.objectives import make_objective  # the objective checks its settings
        make_objective(self, None)


def _positive(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


# --- the settings as flags: derived from the field metadata above ----------------------

@functools.cache
def config_flags() -> tuple[Flag, ...]:
    """Every `dd distill` flag that sets a config field, in the config's order."""
    return collect_flags(DistillConfig)


def flag_name(section: str, key: str) -> str:
    """How messages name a setting: its flag (``--init-mode``), else ``section.key``."""
    for f in config_flags():
        if (f.section, f.key) == (section, key):
            return f.names[0]
    return f"{section}.{key}"


def resumable_settings() -> frozenset[tuple[str, str]]:
    """(section, key) of every setting ``--resume`` may change (``flag(resumable=True)``)."""
    return frozenset((f.section, f.key) for f in config_flags() if f.resumable)


def flag_overrides(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A partial config tree from flag values keyed by ``Flag.dest``; None means not given.

    Example:
        >>> flag_overrides({"images_per_class_per_step": 2, "init_mode": None, "out": "x"})
        {'synth': {'images_per_class': 2}}
    """
    by_dest = {f.dest: f for f in config_flags()}
    out: dict[str, dict[str, Any]] = {}
    for dest, value in values.items():
        f = by_dest.get(dest)
        if f is not None and value is not None:
            out.setdefault(f.section, {})[f.key] = value
    return out


def replace(cfg: DistillConfig, **sections: dict[str, Any]) -> DistillConfig:
    """Copy of cfg with some fields of some sections changed: replace(cfg, run={"device": "cpu"})."""
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()
    }
    return dataclasses.replace(cfg, **changes)

