"""DD-Ranking's scores (IOR, HLR, LRS), computed from fractions, and the full-data reference.

DD-Ranking (Li et al. 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
Distillation", the ``ddranking`` package) scores a distilled set by what it adds over
real data of the same size and how far it stays from the whole dataset, both trained
with hard labels under one protocol:

- IOR (improvement over random) = Acc(synthetic) - Acc(random real subset, same size);
- HLR (hard label recovery) = Acc(full real training set) - Acc(synthetic);
- LRS (label-robust score) = (e^α - e^-1) / (e - e^-1), with α = λ·IOR - (1 - λ)·HLR,
  λ = 1/2, so α = (IOR - HLR) / 2.

With accuracies as fractions, α = Acc(syn) - (Acc(random) + Acc(full)) / 2 lies in
[-1, 1], so LRS lies in [0, 1]: 0 when the set scores 0 against perfect baselines, 1 when
it scores 1 against baselines at 0. IOR = HLR gives α = 0 and LRS = 1 / (1 + e) ≈ 0.269,
not 1/2 (LRS = 1/2 needs α = ln cosh 1 ≈ 0.434). ddranking 0.2.0 feeds percentages to
exp(), which makes α about ±30 and its LRS meaningless (about -0.157 for a typical
set); every function here takes fractions and refuses values outside [-1, 1].

HLR needs Acc(full): a net trained on the whole training set under the same protocol.
``full_data_accuracy`` trains it (seeded, so the number is reproducible) and caches the
result on disk per dataset, data hash, pixel space, model and protocol settings, since
it costs many epochs over the full set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddcli._version import __version__
from ddcli.data._realdata import RealData
from ddcli.infra import io as _io
from ddcli.infra.io import user_cache_dir

LAMBDA = 0.5  # DD-Ranking's lrs_lambda default; α = λ·IOR - (1 - λ)·HLR
CACHE_ENV = "DDCLI_FULL_DATA_CACHE"
_E = math.e


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not -1.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"{name} must be a fraction in [-1, 1] (0.523, not 52.3), got {value}")
    return value


def ior(syn_acc: float, random_acc: float) -> float:
    """Improvement over random: Acc(syn) - Acc(random real subset of the same size)."""
    return _fraction("Acc(syn)", syn_acc) - _fraction("Acc(random)", random_acc)


def hlr(full_acc: float, syn_acc: float) -> float:
    """Hard label recovery: Acc(full real data) - Acc(syn). Lower is better."""
    return _fraction("Acc(full)", full_acc) - _fraction("Acc(syn)", syn_acc)


def lrs_alpha(ior_value: float, hlr_value: float, lam: float = LAMBDA) -> float:
    """α = λ·IOR - (1 - λ)·HLR, from fractions; in [-1, 1] for accuracies in [0, 1]."""
    return lam * _fraction("IOR", ior_value) - (1 - lam) * _fraction("HLR", hlr_value)


def lrs(ior_value: float, hlr_value: float, lam: float = LAMBDA) -> float:
    """Label-robust score (e^α - e^-1) / (e - e^-1) from IOR and HLR as fractions.

    Example:
        >>> round(lrs(0.0, 0.0), 4)  # IOR == HLR: α = 0, LRS = 1 / (1 + e)
        0.2689
        >>> lrs(ior(0.45, 0.26), hlr(0.84, 0.45)) < lrs(ior(0.60, 0.26), hlr(0.84, 0.60))
        True
    """
    alpha = lrs_alpha(ior_value, hlr_value, lam)
    return (math.exp(alpha) - math.exp(-1)) / (_E - math.exp(-1))


@dataclass(frozen=True)
class DDRankingScores:
    """DD-Ranking's hard-label scores of one set, all as fractions."""

    syn_acc: float
    random_acc: float
    full_acc: float
    ior: float
    hlr: float
    alpha: float
    lrs: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ddranking_scores(syn_acc: float, random_acc: float, full_acc: float) -> DDRankingScores:
    """IOR, HLR, α and LRS from the three accuracies (fractions of the test set)."""
    i, h = ior(syn_acc, random_acc), hlr(full_acc, syn_acc)
    return DDRankingScores(syn_acc=float(syn_acc), random_acc=float(random_acc),
                           full_acc=float(full_acc), ior=i, hlr=h, alpha=lrs_alpha(i, h),
                           lrs=lrs(i, h))


@dataclass(frozen=True)
class FullDataProtocol:
    """How the full-data reference net is trained: the train protocol's SGD on all data.

    Attributes:
        model: a ``create_model`` spec (name, in_channels, num_classes, image_size, ...).
        epochs: passes over the whole training set (the lr times ``lr_decay`` after half).
        lr, batch_size, momentum, weight_decay: SGD as in ``dd eval --protocol train``.
        n_nets: nets trained (net j from ``derive_seed(seed, "full-data", j)``).
        seed: the protocol's seed; equal settings give equal accuracies.
        init_scheme: weight init of the fresh nets.
    """

    model: dict[str, Any]
    epochs: int
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: float = 0.1
    n_nets: int = 1
    seed: int = 0
    init_scheme: str = "xavier"


@dataclass
class FullDataResult:
    """Test accuracies of the full-data reference nets, and where they came from."""

    accuracies: list[float]
    seconds: float
    cached: bool
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)


def full_data_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$DDCLI_FULL_DATA_CACHE``, else ``~/.cache/ddcli/full-data``."""
    return user_cache_dir("full-data", env=CACHE_ENV, override=cache_dir)


def full_data_key(data: RealData, protocol: FullDataProtocol) -> dict[str, Any]:
    """What the reference accuracy depends on: dataset, its bytes and space, model, protocol."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([list(t.shape), str(t.dtype)]).encode())
        h.update(t.numpy().tobytes())
    return {"dataset": data.name, "data_sha256": h.hexdigest(),
            "pixel_space": data.pixel_space_record, "protocol": asdict(protocol)}


def full_data_accuracy(data: RealData, protocol: FullDataProtocol, *,
                       cache_dir: str | os.PathLike | None | bool = None,
                       device: torch.device | str = "cpu",
                       batched: bool | None = None) -> FullDataResult:
    """Acc(full): fresh nets trained on all of ``data.train_x``, tested on ``data.test_x``.

    Seeded throughout (inits, shuffles), so equal data and settings give equal numbers.
    The result is cached as JSON (written atomically) under ``cache_dir``
    (``full_data_cache_dir``), keyed by ``full_data_key``; ``cache_dir=False`` never
    reads or writes it.

    Example:
        >>> from ddcli.evaluate.ddranking import FullDataProtocol, full_data_accuracy
        >>> spec = {"name": "convnet", "in_channels": 3, "num_classes": 10, "image_size": 32}
        >>> ref = full_data_accuracy(data, FullDataProtocol(spec, epochs=30))  # doctest: +SKIP
        >>> ddranking_scores(0.45, 0.26, ref.mean).lrs  # doctest: +SKIP
    """
    from ddcli.core.params import init_params
    from ddcli.core.seeds import derive_seed
    from ddcli.evaluate._many_nets import train_accuracies
    from ddcli.models import create_model

    key = full_data_key(data, protocol)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    file = None if cache_dir is False else full_data_cache_dir(
        None if cache_dir in (None, True) else cache_dir) / f"{digest[:24]}.json"
    if file is not None and file.is_file():
        try:
            stored = json.loads(file.read_text())
            if stored.get("key") == json.loads(json.dumps(key)):
                return FullDataResult(stored["accuracies"], stored["seconds"], True, key)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: train again and overwrite
    device = torch.device(device)
    model = create_model(**protocol.model).to(device)
    inits = [{k: v.to(device) for k, v in init_params(
        model, protocol.init_scheme, derive_seed(protocol.seed, "full-data", j)).items()}
        for j in range(protocol.n_nets)]
    seeds = [derive_seed(protocol.seed, "full-shuffle", j) for j in range(protocol.n_nets)]
    t0 = time.perf_counter()
    acc = train_accuracies(
        model, inits, data.train_x.to(device), data.train_y.to(device), data.test_x.to(device),
        data.test_y.to(device), lr=protocol.lr, epochs=protocol.epochs, seeds=seeds,
        batch_size=protocol.batch_size, momentum=protocol.momentum,
        weight_decay=protocol.weight_decay, lr_decay=protocol.lr_decay,
        batched=batched)
    result = FullDataResult([float(a) for a in acc], time.perf_counter() - t0, False, key)
    if file is not None:
        try:
            _io.write_json(file, {"key": key, "accuracies": result.accuracies,
                                  "seconds": result.seconds, "ddcli_version": __version__})
        except OSError:
            pass  # a read-only cache only costs the next caller a re-run
    return result
