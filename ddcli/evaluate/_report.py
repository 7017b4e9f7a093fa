"""Evaluation settings and results: ``EvalConfig``, ``EvalRow``, ``EvalReport``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddcli.infra import io as _io
from ddcli.errors import ConfigError
from ddcli.core.augment import parse_augment
from ddcli.evaluate._baselines import check_baselines
from ddcli.infra.sections import Flag, field_flags, flag

PROTOCOLS = ("replay", "train", "dc", "dsa", "mtt")
NAMED = ("dc", "dsa", "mtt")  # the papers' own evaluations (ddcli.evaluate.protocols)
PRECISIONS = ("fp32", "bf16")  # EvalConfig.precision
#: EvalConfig.batching -> the ``batched`` argument of the _batched routines
BATCHING = {"auto": None, "vmap": True, "loop": False}
FRESH = "fresh nets"  # the train protocol's nets (the replay's groups: ddcli.evaluate.initial_nets)
RECORD_FORMAT = "ddcli-eval"
# `dd eval`'s --help panels
PROTOCOL, BASELINE_PANEL, TRAIN, OPTIONS = "Protocol", "Baselines", "Train protocol", "Options"


def _flag(default: Any, help: str, panel: str, **kw: Any) -> Any:
    return field(default=default, metadata=flag(help, panel=panel, **kw))


def eval_flags() -> tuple[Flag, ...]:
    """`dd eval`'s options that are ``EvalConfig`` fields, in field order."""
    return field_flags(EvalConfig)


@dataclass
class EvalConfig:
    """How to evaluate: the protocol and its settings (all recorded in every report).

    Attributes:
        protocol: "replay" (the paper's: apply the learned steps and rates), "train"
            (the later papers': SGD on the images for ``train_epochs``), or one paper's
            own evaluation with every knob set: "dc", "dsa" or "mtt"
            (``ddcli.evaluate.protocols``). None picks replay for bundles and train for
            other image sets.
        n_nets: fresh nets per row (random inits; baseline draws for a fixed init).
        seed: seeds every fresh init, shuffle and baseline draw.
        per_step: replay: measure after every GD step, not only after each epoch.
        baselines: names from ``BASELINES``.
        candidates: ``optimized-real``: random draws to pick the best of.
        model: train protocol: any registered model (default: the set's own).
        train_lr: train protocol: the SGD rate (default 0.01, the field's; mtt: the set's
            learned rate).
        train_epochs: epochs (default: 300 for train; the named protocol's otherwise).
        batch_size, momentum, weight_decay: train protocol SGD settings.
        lr_decay: train protocol: the lr is multiplied by it after ``decay_epoch`` epochs
            (0.1, the DC/DSA/MTT protocol's step).
        decay_epoch: epochs at the first rate (default: half; the named protocols: DC's
            ``Epoch // 2 + 2``).
        reset_momentum: start a fresh optimiser (momentum from zero) at the decay, as
            DC's code does (the named protocols always do).
        augment: train protocol: none, dsa[:FAMILIES] or dc[:OPS] on every SGD batch
            (default none; the named protocols: the paper's).
        precision: train protocols: "fp32", or "bf16" (training and testing under
            bfloat16 autocast; the weights and the SGD update stay fp32).
        compile: train protocols: each net's gradient through ``torch.compile``
            (``ddcli.core.steps.compiled_loss_grads``; nets one at a time, not vmapped).
        baseline_labels: sets with learned soft labels: the baselines train on their real
            images' classes ("hard") or on the set's labels slot by slot ("set").
        init_scheme: weight init of fresh nets (default: the bundle's, else xavier).
        device: auto, cpu, cuda, cuda:N or mps.
        batching: how nets run together: "vmap" (stacked parameters under
            ``torch.func.vmap``), "loop" (one at a time) or "auto" (vmap on GPUs; on
            CPUs only for the replay's GD steps, where it is not slower than a loop).
    """

    # A field with _flag(...) metadata is also a `dd eval` option (ddcli.cli.eval), its
    # help and default shown from here; the others are set from Python only.
    protocol: str | None = _flag(
        None, "replay (the paper's: learned steps and rates; bundles only), train (SGD on the "
        "images), or a paper's own evaluation with every knob set: dc (300 epochs; MNIST "
        "augmented as DC does), dsa (1000 epochs, DSA augmentation), mtt (as dsa, at the "
        "set's learned rate). docs/eval.md gives each one's source.", PROTOCOL,
        default_text="replay for bundles, train for other sets")
    n_nets: int = _flag(20, "Fresh nets per row (baseline draws for a fixed-init bundle).",
                        PROTOCOL)
    seed: int = 0
    per_step: bool = _flag(False, "Replay: measure accuracy after every GD step, not only "
                           "after each epoch.", PROTOCOL)
    baselines: tuple[str, ...] = ()
    candidates: int = _flag(10, "optimized-real: random draws to pick the best of (scored on "
                            "training data).", BASELINE_PANEL)
    model: str | None = _flag(None, "Train protocol: any model ({models}) or your own "
                              "FILE.py:FACTORY, for a cross-architecture row.", PROTOCOL,
                              metavar="NAME", default_text="the set's own")
    train_lr: float | None = _flag(None, "Train protocols: the SGD rate (times --lr-decay at "
                                   "half the epochs).", TRAIN, aliases=("--lr",),
                                   default_text="0.01; mtt: the set's learned rate")
    train_epochs: int | None = _flag(None, "Train protocols: epochs over the images.", TRAIN,
                                     default_text="train 300, dc 301, dsa and mtt 1001")
    batch_size: int = _flag(256, "Train protocol: batch size.", TRAIN)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: float = _flag(0.1, "Train protocol: the lr's factor at half the epochs "
                            "(DC/DSA/MTT: 0.1).", TRAIN)
    decay_epoch: int | None = None
    reset_momentum: bool = False
    baseline_labels: str = _flag("hard", "Soft-label sets: baselines train on their images' "
                                 "own classes (hard) or on the set's labels, slot by slot "
                                 "(set).", BASELINE_PANEL, metavar="hard|set")
    validation: int = _flag(0, "Score on N training images held out (those `dd distill "
                            "--validation N` holds out), not the test set; baselines draw "
                            "from the rest. For choosing between sets.", PROTOCOL,
                            metavar="N", default_text="0: the test set")
    init_scheme: str | None = _flag(None, "Weight init of fresh nets.", PROTOCOL,
                                    default_text="the bundle's, else xavier")
    device: str = "auto"
    batching: str = _flag("auto", "How nets run together: vmap (stacked, torch.func.vmap), "
                          "loop (one at a time), or auto (vmap on GPUs; on CPUs only where it "
                          "is faster).", OPTIONS)
    augment: str | None = _flag(
        None, "Train protocols: none, dsa (DSA's ops on every SGD batch), dc (DC's "
        "crop_scale_rotate for MNIST), or dsa:FAMILY_... / dc:OP_....", TRAIN, metavar="AUG",
        default_text="train none; dc: DC's per dataset; dsa, mtt: dsa")
    precision: str = _flag("fp32", "Train protocols: fp32, or bf16 (the nets' convolutions "
                           "and matmuls under bfloat16 autocast: ~1.8x on CPUs with AMX; "
                           "its accuracy is measured in docs/eval.md).", TRAIN,
                           metavar="fp32|bf16")
    compile: bool = _flag(False, "Train protocols: compile each net's gradient with "
                          "torch.compile (about a minute once per model and shape; 1.3x "
                          "in fp32, about 4x with bf16 on a CPU with AMX).", TRAIN)
    ddranking: bool = _flag(False, "Train protocol: DD-Ranking's IOR, HLR and LRS, from "
                            "fractions (adds random-real; trains a full-data net once, "
                            "cached).", TRAIN)
    full_data_epochs: int = _flag(20, "--ddranking: epochs of the full-data reference net.",
                                  TRAIN)

    def validate(self) -> "EvalConfig":
        if self.batching not in BATCHING:
            raise ConfigError(f"--batching must be auto, vmap or loop, got {self.batching!r}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, "
                              f"got {self.protocol!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.ddranking and self.protocol == "replay":
            raise ConfigError("--ddranking scores the train protocol: pass --protocol train "
                              "(or dc, dsa, mtt)")
        for flag in ("n_nets", "candidates", "train_epochs", "batch_size", "full_data_epochs",
                     "decay_epoch"):
            value = getattr(self, flag)
            if value is None and flag in ("train_epochs", "decay_epoch"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) \
                or self.validation < 0:
            raise ConfigError(f"--validation must be a count of images >= 0, got "
                              f"{self.validation!r}")
        if self.train_lr is not None and not (math.isfinite(self.train_lr) and self.train_lr > 0):
            raise ConfigError(f"--train-lr must be a positive number, got {self.train_lr}")
        if self.baseline_labels not in ("hard", "set"):
            raise ConfigError(f"--baseline-labels must be hard or set, got {self.baseline_labels!r}")
        if not (math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ConfigError("momentum must be in [0, 1) and weight decay >= 0")
        self.baselines = check_baselines(self.baselines)
        try:
            parse_augment(self.augment)
        except ValueError as exc:
            raise ConfigError(f"--augment: {exc} (none, dsa, dsa:FAMILY_..., dc or "
                              "dc:OP_...)") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["baselines"] = list(self.baselines)
        return d


@dataclass
class EvalRow:
    """One line of results: a set (distilled or a baseline) under one group of nets.

    Attributes:
        name: "distilled", a baseline name, or "knn".
        group: which nets: "stored init", "fresh random inits", "fresh nets" (train
            protocol), or for knn rows the set the classifier uses.
        accuracies: final test accuracy of every net or draw.
        at: GD steps (replay) after which ``curve`` was measured; None for baselines.
        curve: accuracies at each of ``at``, one list per checkpoint (nets inside).
        seconds: wall time of the row.
    """

    name: str
    group: str
    accuracies: list[float]
    at: list[int] | None = None
    curve: list[list[float]] | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"knn · {self.group}" if self.name == "knn" else f"{self.name} · {self.group}"

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population std over nets (numpy's default, as the DC papers report)."""
        return float(np.std(self.accuracies))

    @property
    def min(self) -> float:
        return float(np.min(self.accuracies))

    @property
    def max(self) -> float:
        return float(np.max(self.accuracies))

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "group": self.group, "label": self.label, "n": self.n,
             "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
             "accuracies": self.accuracies, "seconds": round(self.seconds, 3)}
        if self.at is not None and self.curve is not None:
            d["curve"] = {
                "at_step": self.at,
                "mean": [float(np.mean(c)) for c in self.curve],
                "std": [float(np.std(c)) for c in self.curve],
                "accuracies": self.curve,
            }
        return d


@dataclass
class EvalReport:
    """Everything an evaluation measured, with the settings that produced it.

    Attributes:
        source: the evaluated file or folder.
        kind: "bundle", "pt", "npz" or "imagefolder".
        dataset: the dataset whose test set was used.
        test_size: images scored: the full test set, or the validation split's.
        protocol: "replay", "train", "dc", "dsa" or "mtt".
        model: the model spec the nets were built from.
        settings: ``EvalConfig.to_dict()`` plus resolved values (lr, steps, init scheme).
        rows: distilled rows first, then baselines, then knn rows.
        notes: things the user should know (re-normalisation, default lr, fallbacks).
        warnings: results the user must not miss (a row at chance), one line each.
        elapsed_s: total wall time.
        provenance: {"set": how the set was made (the bundle's last record, if any),
            "eval": this evaluation's own record} (``ddcli.infra.provenance``).
        ddranking: with ``EvalConfig.ddranking``, DD-Ranking's scores from fractions
            (``ddcli.evaluate.ddranking``) and the full-data reference they used.
    """

    source: str
    kind: str
    dataset: str
    test_size: int
    protocol: str
    model: dict[str, Any]
    settings: dict[str, Any]
    rows: list[EvalRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    ddranking: dict[str, Any] | None = None  # IOR, HLR, LRS and the full-data reference
    split: str = "test"  # or "validation": held-out training images (EvalConfig.validation)

    @property
    def primary(self) -> EvalRow:
        """The distilled set's main row (the stored init for a fixed-init replay)."""
        return next(r for r in self.rows if r.name == "distilled")

    def row(self, name: str, group: str | None = None) -> EvalRow | None:
        return next((r for r in self.rows
                     if r.name == name and (group is None or r.group == group)), None)

    @property
    def margin_over_random_real(self) -> float | None:
        """Primary distilled mean minus the random-real mean (accuracy points / 100)."""
        base = self.row("random-real")
        return None if base is None else self.primary.mean - base.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "kind": self.kind, "dataset": self.dataset,
            "test_size": self.test_size, "split": self.split, "protocol": self.protocol,
            "model": self.model,
            "settings": self.settings, "rows": [r.to_dict() for r in self.rows],
            "margin_over_random_real": self.margin_over_random_real,
            "notes": self.notes, "warnings": self.warnings, "elapsed_s": round(self.elapsed_s, 3),
            "provenance": self.provenance, "ddranking": self.ddranking,
        }


def sidecar_path(source: str | os.PathLike) -> Path:
    """``m.safetensors`` -> ``m.eval.json`` beside it (also for .pt/.npz and folders)."""
    path = Path(source)
    stem = path.name
    for suffix in (".safetensors", ".pt", ".pth", ".npz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(stem.rstrip("/") + ".eval.json")


def record_report(report: EvalReport, path: str | os.PathLike | None = None) -> Path:
    """Add ``report`` to the sidecar JSON beside its source (never the bundle itself).

    The sidecar keeps one entry per protocol, dataset and settings (the device and the
    batching don't count: they change speed, not results); a rerun replaces its entry.
    Written atomically.
    """
    if path is None and report.source.startswith("<"):
        raise ConfigError("this report has no source file to put a sidecar beside; pass a path")
    path = Path(path) if path is not None else sidecar_path(report.source)
    entries: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            entries = list(old.get("evaluations", [])) if isinstance(old, dict) else []
        except (OSError, ValueError):
            entries = []  # an unreadable sidecar is replaced, not appended to
    new = report.to_dict()
    entries = [e for e in entries if _record_key(e) != _record_key(new)]
    entries.append(new)
    _io.write_json(path, {"format": RECORD_FORMAT, "source": report.source,
                          "evaluations": entries})
    return path


def _record_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    settings = {k: v for k, v in (entry.get("settings") or {}).items()
                if k not in ("device", "batching")}
    return entry.get("protocol"), entry.get("dataset"), json.dumps(settings, sort_keys=True)
