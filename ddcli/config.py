"""The typed configuration tree of a distillation run.

One ``DistillConfig`` describes a run completely. It is written as ``config.json`` into
the run folder and into every bundle, so a result always says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

INIT_MODES = ("fixed", "random", "pretrained-fixed", "pretrained-random")
UNROLL_MEMORY_MODES = ("full", "stepwise", "recompute")
OBJECTIVES = ("distill", "adapt", "attack")
WINDOW_SAMPLING = ("last", "random")
INNER_OPTIMIZERS = ("gd", "sgd")
AUGMENTS = ("none", "crop-flip", "dsa")

# The paper's model for each named dataset; other inputs default to ConvNet.
DEFAULT_MODELS = {
    "mnist": "lenet",
    "fashion-mnist": "lenet",
    "cifar10": "alexcifarnet",
    "cifar100": "alexcifarnet",
    "svhn": "alexcifarnet",
}


class _Section:
    """Mixin giving dataclasses a strict ``from_dict`` and a plain ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config"):
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table/object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        # Keys renamed since earlier versions still load (config files, run folders).
        renamed = getattr(cls, "RENAMED", {})
        if any(old in data for old in renamed):
            data = {renamed.get(k, k): v for k, v in data.items()}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(known)}"
            )
        kwargs = {}
        for name, value in data.items():
            sub = _SECTIONS.get((cls.__name__, name))
            kwargs[name] = sub.from_dict(value, where=f"{where}.{name}") if sub else value
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class DataConfig(_Section):
    dataset: str = "mnist"
    data_root: str | None = None
    batch_size: int = 1024  # real images per outer iteration
    # none; crop-flip (reflect-pad 4, random crop, flip on real batches: the reference's
    # CIFAR setting); dsa (DSA's ops on the real batch and on the synthetic images of
    # every inner step), or dsa:FAMILY_FAMILY... for some of its op families.
    augment: str = "none"
    validation: int = 0  # training images held out for model selection (never the test set)

    def __post_init__(self) -> None:
        # Configs before augmentations had names stored a bool: True was crop-flip.
        if isinstance(self.augment, bool):
            self.augment = "crop-flip" if self.augment else "none"


@dataclass
class ModelConfig(_Section):
    name: str | None = None  # None: the paper's model for the dataset
    init_scheme: str = "xavier"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SynthConfig(_Section):
    steps: int = 10
    epochs: int = 3
    images_per_class: int = 1  # per class, per step
    step_lr: float = 0.02  # the initial value of every learned GD rate (not raw)
    # T, the number of inner steps (and learned rates); None: steps x epochs. Must be a
    # multiple of steps (epochs becomes T / steps).
    unroll_steps: int | None = None
    # RaT-BPTT's set-structured loop: each inner step uses K images drawn from all
    # steps x n images (a fresh shuffle per pass and per iteration); None: the paper's
    # ordered steps, all n images of step t mod S.
    inner_batch: int | None = None
    window: int | None = None  # W: differentiate only the last W inner steps; None: all T
    window_sampling: str = "last"  # last: unroll all T steps; random: N ~ U[W, T] per iteration
    inner_optimizer: str = "gd"  # gd (the paper's) or sgd (momentum + weight decay)
    inner_momentum: float = 0.9  # sgd only
    inner_weight_decay: float = 5e-4  # sgd only
    learn_labels: bool = False  # learned soft labels, one-hot init, kept >= 0

    RENAMED = {"distill_lr": "step_lr"}


@dataclass
class OptimConfig(_Section):
    meta_lr: float = 0.01  # Adam's step size over the synthetic set and rates
    beta1: float = 0.5
    beta2: float = 0.999
    decay_every: float = 40.0  # in real-data epochs
    decay_factor: float = 0.5
    real_epochs: float = 400.0  # budget, used when iterations is None
    iterations: int | None = None
    label_lr: float | None = None  # Adam's step size for learned labels; None: meta_lr

    RENAMED = {"lr": "meta_lr"}


@dataclass
class InitConfig(_Section):
    mode: str = "fixed"
    seed: int = 0
    n_nets: int = 1
    sample_n_nets: int = 1
    pool: str | None = None
    pool_index: int = 0
    pool_holdout: float = 0.2


@dataclass
class ObjectiveConfig(_Section):
    kind: str = "distill"
    source_dataset: str | None = None  # adapt: the pool's dataset
    attack_class: int | None = None
    target_class: int | None = None


@dataclass
class RunConfig(_Section):
    device: str = "auto"  # auto: CUDA if present, then MPS, then CPU
    unroll_memory: str = "full"  # see docs/performance.md for the measurements behind it
    checkpoint_every: int = 50
    snapshot_every: int = 0  # keep images+rates every N iterations (dd visualize --run)
    eval_every: int = 0
    eval_nets: int = 4
    log_every: int = 10
    nproc: int = 1  # processes the sampled nets are split over (dd distill --nproc)
    batch_nets: bool = True  # evaluate the sampled nets together (vmap) rather than looping
    keep_best: bool = False  # bundle the set with the best validation accuracy (eval_every)


@dataclass
class DistillConfig(_Section):
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

    @property
    def total_steps(self) -> int:
        """T, the inner steps of one unroll (and the number of learned rates)."""
        return self.synth.unroll_steps or self.synth.steps * self.synth.epochs

    @property
    def passes(self) -> int:
        """E, the passes over the steps: T / S."""
        return self.total_steps // self.synth.steps

    def model_name(self, dataset: str | None = None) -> str:
        return self.model.name or DEFAULT_MODELS.get(dataset or self.data.dataset, "convnet")

    def validate(self) -> "DistillConfig":
        """Raise ConfigError for values no run could use. Returns self."""
        s, o, i, r = self.synth, self.optim, self.init, self.run
        _positive("steps", s.steps)
        _positive("epochs", s.epochs)
        _positive("images-per-class", s.images_per_class)
        _positive("batch-size", self.data.batch_size)
        _positive("n-nets", i.n_nets)
        _positive("sample-n-nets", i.sample_n_nets)
        for name, value in (("step-lr", s.step_lr), ("meta-lr", o.meta_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name} must be a positive number, got {value}")
        if not 0 < o.decay_factor <= 1:
            raise ConfigError(f"--decay-factor must be in (0, 1], got {o.decay_factor}")
        if o.decay_every <= 0:
            raise ConfigError(f"--decay-every must be positive, got {o.decay_every}")
        if o.iterations is None:
            if o.real_epochs <= 0:
                raise ConfigError(f"--real-epochs must be positive, got {o.real_epochs}")
        else:
            _positive("iterations", o.iterations)
        if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
            raise ConfigError("Adam betas must be in [0, 1)")
        if i.mode not in INIT_MODES:
            raise ConfigError(f"--init-mode must be one of {', '.join(INIT_MODES)}, got {i.mode!r}")
        if i.mode == "random" and i.sample_n_nets > i.n_nets:
            raise ConfigError(
                f"--sample-n-nets ({i.sample_n_nets}) can't exceed --n-nets ({i.n_nets})"
            )
        if i.mode.startswith("pretrained") and not i.pool:
            raise ConfigError(f"--init-mode {i.mode} needs --pool POOL_DIR (made by `dd pretrain`)")
        if not 0 <= i.pool_holdout < 1:
            raise ConfigError(f"--pool-holdout must be in [0, 1), got {i.pool_holdout}")
        if r.unroll_memory not in UNROLL_MEMORY_MODES:
            raise ConfigError(
                f"--unroll-memory must be one of {', '.join(UNROLL_MEMORY_MODES)}, "
                f"got {r.unroll_memory!r}"
            )
        if self.objective.kind not in OBJECTIVES:
            raise ConfigError(
                f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective.kind!r}"
            )
        for name in ("checkpoint_every", "snapshot_every", "eval_every", "log_every"):
            if getattr(r, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        _positive("nproc", r.nproc)
        self._validate_methods()
        if not isinstance(r.batch_nets, bool):
            raise ConfigError(f"run.batch_nets must be true or false, got {r.batch_nets!r}")
        return self


    def _validate_methods(self) -> None:
        s, d, o, r = self.synth, self.data, self.optim, self.run
        t = self.total_steps
        if s.unroll_steps is not None:
            _positive("unroll-steps", s.unroll_steps)
            if s.unroll_steps % s.steps:
                raise ConfigError(f"--unroll-steps {s.unroll_steps} is not a multiple of "
                                  f"--steps {s.steps}")
        for flag, value in (("inner-batch", s.inner_batch), ("window", s.window)):
            if value is not None:
                _positive(flag, value)
        if s.window is not None and s.window > t:
            raise ConfigError(f"--window {s.window} exceeds the {t} inner steps")
        if s.window_sampling not in WINDOW_SAMPLING:
            raise ConfigError(f"--window-sampling must be one of {', '.join(WINDOW_SAMPLING)}, "
                              f"got {s.window_sampling!r}")
        if s.inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"--inner-optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, "
                              f"got {s.inner_optimizer!r}")
        if not (0 <= s.inner_momentum < 1 and s.inner_weight_decay >= 0):
            raise ConfigError("--inner-momentum must be in [0, 1) and --inner-weight-decay >= 0")
        if o.label_lr is not None and not (math.isfinite(o.label_lr) and o.label_lr > 0):
            raise ConfigError(f"--label-lr must be a positive number, got {o.label_lr}")
        if not (d.augment in AUGMENTS or d.augment.startswith("dsa:")):
            raise ConfigError(f"--augment must be one of {', '.join(AUGMENTS)} or dsa:OPS, "
                              f"got {d.augment!r}")
        if not isinstance(d.validation, int) or d.validation < 0:
            raise ConfigError(f"--validation must be a count of images >= 0, got {d.validation!r}")
        if r.keep_best and not (d.validation and r.eval_every):
            raise ConfigError("--keep-best selects on a validation split: it needs "
                              "--validation N and --eval-every K")


def _positive(flag: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{flag} must be a positive integer, got {value!r}")


_SECTIONS = {
    ("DistillConfig", f.name): f.default_factory  # type: ignore[misc]
    for f in fields(DistillConfig)
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a nested dict (not yet validated)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"can't read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text.decode())
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:] or 'JSON'}: {exc}") from None


def merge_dicts(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: values in ``override`` win; nested tables merge."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def replace(cfg: DistillConfig, **sections: dict[str, Any]) -> DistillConfig:
    """Copy of cfg with some fields of some sections changed: replace(cfg, run={"device": "cpu"})."""
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()
    }
    return dataclasses.replace(cfg, **changes)
