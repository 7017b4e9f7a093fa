"""Evaluating bundles made from pretrained pools, and the adapt and attack objectives.

Every net is measured three times on the full test set of the bundle's (target)
dataset: ``before`` (its initial weights), ``after`` (the distilled steps replayed with
the learned rates through the set's own inner loop: update rule, inner batches, soft
labels, as ``dd eval`` replays any set) and ``baseline`` (the same inner loop with the
same rates on random real target images, in the distilled set's shape and label layout,
trained on their classes). From one
confusion matrix per measurement come the overall accuracy, per-class accuracy and,
for attack bundles, the accuracy on classes other than A and the attack success rate
(the fraction of class-A test images predicted as B).

Which nets: a pool bundle's held-out pool nets (never seen in distillation); a
pretrained-fixed or fixed bundle's stored init as well; fresh random inits for a
random-init attack bundle.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddcli.core.inner import InnerLoop
from ddcli.core.metrics import confusion
from ddcli.core.seeds import derive_seed
from ddcli.core.unroll import unroll
from ddcli.evaluate.initial_nets import HELD_OUT, RANDOM, STORED, evaluation_nets
from ddcli.evaluate._replay_protocol import inner_loop_of
from ddcli.pool.folder import Pool
from ddcli.bundle import Bundle
from ddcli.data import RealData, load_dataset
from ddcli.errors import ConfigError, PoolError
from ddcli.init_modes import draws_fresh_nets, is_pretrained
from ddcli.models import create_model
from ddcli.core.params import Params

PHASES = ("before", "after", "baseline")


@dataclass
class NetMetrics:
    """One net's test numbers at one phase; attack fields are None for other bundles."""

    accuracy: float
    per_class: list[float]
    other_accuracy: float | None = None  # attack: accuracy on the classes other than A
    success_rate: float | None = None  # attack: class-A images predicted as B


@dataclass
class NetEval:
    group: str  # HELD_OUT, STORED or RANDOM
    pool_index: int | None
    before: NetMetrics
    after: NetMetrics
    baseline: NetMetrics


@dataclass
class PoolEvalReport:
    """Every number of one evaluation; ``summary`` aggregates the main group's nets."""

    bundle: str
    objective: str  # distill, adapt or attack
    init_mode: str
    dataset: str  # where the nets are tested (adapt: the target)
    source_dataset: str | None  # the pool's dataset, if any
    classes: list[str]
    attack_class: int | None
    target_class: int | None
    pool: str | None
    steps: int
    epochs: int
    images: int
    seed: int
    nets: list[NetEval] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        """The group the summary reports: held-out pool nets if any were evaluated."""
        groups = [n.group for n in self.nets]
        return next(g for g in (HELD_OUT, RANDOM, STORED) if g in groups)

    def values(self, phase: str, metric: str, group: str | None = None) -> list[float]:
        group = group or self.group
        return [getattr(getattr(n, phase), metric) for n in self.nets if n.group == group]

    def stat(self, phase: str, metric: str, group: str | None = None) -> tuple[float, float]:
        """(mean, population std) of a metric over a group's nets."""
        v = self.values(phase, metric, group)
        return statistics.fmean(v), (statistics.pstdev(v) if len(v) > 1 else 0.0)

    def per_class(self, phase: str, group: str | None = None) -> list[float]:
        rows = self.values(phase, "per_class", group)
        return [statistics.fmean(col) for col in zip(*rows)]

    def metrics(self) -> list[str]:
        names = ["accuracy"]
        return names + (["other_accuracy", "success_rate"] if self.objective == "attack" else [])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = {
            "group": self.group, "n_nets": len(self.values("before", "accuracy")),
            **{f"{phase}_{m}": dict(zip(("mean", "std"), self.stat(phase, m)))
               for phase in PHASES for m in self.metrics()},
            **{f"{phase}_per_class": self.per_class(phase) for phase in PHASES},
        }
        return out


def is_pool_bundle(bundle: Bundle) -> bool:
    """Whether ``evaluate_pool_bundle`` is the evaluation for this bundle.

    Never for a trajectory-matching bundle: its experts only shaped the set, which is
    meant for fresh nets (MTT's evaluation), whatever init mode it records."""
    kind = _objective(bundle).get("kind", "distill")
    if kind == "trajectory":
        return False
    return is_pretrained(bundle.init_mode) or kind in ("adapt", "attack")


def evaluate_pool_bundle(
    bundle: Bundle | str | Path,
    *,
    data_root: str | Path | None = None,
    pool: str | Path | None = None,
    n_nets: int | None = None,
    seed: int = 0,
    data: RealData | None = None,
    device: str = "cpu",
) -> PoolEvalReport:
    """Before/after/baseline test numbers for a pretrained, adapt or attack bundle.

    Args:
        bundle: a Bundle or a bundle path.
        data_root: data root for the bundle's dataset.
        pool: the pool folder; default the path recorded in the bundle.
        n_nets: at most this many held-out nets (default all); fresh nets for a
            random-init attack bundle (default 10).
        seed: seeds the random real baseline images (and fresh nets).
        data: preloaded target data (skips ``load_dataset``), mainly for tests.
        device: where to run.

    Raises:
        PoolError: the pool is missing or changed since distillation.

    Example:
        >>> report = evaluate_pool_bundle("attack.safetensors")  # doctest: +SKIP
        >>> report.stat("after", "success_rate")  # doctest: +SKIP
        (0.97, 0.01)
    """
    path = None
    if not isinstance(bundle, Bundle):
        path, bundle = str(bundle), Bundle.load(bundle)
    if n_nets is not None and n_nets < 1:
        raise ConfigError(f"--n-nets must be a positive integer, got {n_nets}")
    data = data if data is not None else load_dataset(bundle.dataset, root=data_root)
    if tuple(data.test_x.shape[1:]) != bundle.input_shape or data.num_classes != bundle.num_classes:
        raise ConfigError(f"{bundle.dataset} test images don't match the bundle's shape "
                          f"{bundle.input_shape} and {bundle.num_classes} classes")
    dev = torch.device(device)
    model = create_model(**bundle.model).to(dev)
    objective, init = _objective(bundle), bundle.extra.get("init", {})
    kind = objective.get("kind", "distill")
    a, b = objective.get("attack_class"), objective.get("target_class")
    report = PoolEvalReport(
        bundle=path or "", objective=kind, init_mode=bundle.init_mode, dataset=bundle.dataset,
        source_dataset=bundle.extra.get("datasets", {}).get("source") or init.get("pool_dataset"),
        classes=list(bundle.classes),
        attack_class=a if kind == "attack" else None, target_class=b if kind == "attack" else None,
        pool=None, steps=bundle.steps, epochs=bundle.epochs,
        images=int(bundle.images.shape[0] * bundle.images.shape[1]), seed=seed)
    nets = _nets(bundle, model, init, pool, n_nets, seed, dev, report)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    images, labels, lrs = bundle.images.to(dev), bundle.labels.to(dev), bundle.lrs.to(dev)
    inner = inner_loop_of(bundle, report.notes)
    targets = labels if bundle.soft_labels is None else bundle.soft_labels.to(dev)
    if bundle.soft_labels is not None:
        report.notes.append("the set's learned soft labels are the nets' targets; the "
                            "baseline trains on its real images' classes")
    for j, (group, index, params0) in enumerate(nets):
        real = random_real_images(labels, data, derive_seed(seed, "pool-baseline", j)).to(dev)
        after = replay(model, params0, images, targets, lrs, inner, seed)
        tuned = replay(model, params0, real, labels, lrs, inner, seed)
        measured = [_metrics(confusion(model, p, test_x, test_y, bundle.num_classes, chunk=2048),
                             a, b, kind) for p in (params0, after, tuned)]
        report.nets.append(NetEval(group, index, *measured))
    return report


def replay(model: nn.Module, params0: Params, images: Tensor, targets: Tensor, lrs: Tensor,
           inner: InnerLoop, seed: int) -> Params:
    """The set's inner loop from ``params0``: its update rule and schedule (minibatches
    seeded as ``dd eval``'s replay seeds them), without augmentation, as every replay."""
    schedule = inner.schedule(derive_seed(seed, "replay-schedule"))
    return unroll(inner.step_fn(model), params0, images, targets, lrs, create_graph=False,
                  schedule=schedule).params


def random_real_images(labels: Tensor, data: RealData, seed: int) -> Tensor:
    """Real training images with the same labels layout: (S, n) labels -> (S, n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    flat = labels.reshape(-1).cpu()
    out = torch.empty(flat.shape[0], *data.train_x.shape[1:])
    for c in flat.unique().tolist():
        slots = (flat == c).nonzero().squeeze(1)
        candidates = (data.train_y == c).nonzero().squeeze(1)
        if candidates.numel() == 0:
            raise ConfigError(f"{data.name} has no training images of class {c}")
        n = candidates.numel()
        pick = candidates[torch.randperm(n, generator=g)[: slots.numel()]]
        if pick.numel() < slots.numel():  # fewer real images than slots: draw with repeats
            pick = candidates[torch.randint(n, (slots.numel(),), generator=g)]
        out[slots] = data.train_x[pick]
    return out.reshape(*labels.shape, *data.train_x.shape[1:])


def _objective(bundle: Bundle) -> dict[str, Any]:
    return bundle.extra.get("objective") or dict(bundle.config.get("objective", {}))


def _nets(bundle: Bundle, model: nn.Module, init: dict, pool_path, n_nets, seed, dev,
          report: PoolEvalReport) -> list[tuple[str, int | None, Params]]:
    """(group, pool index, weights) of every net to evaluate (``evaluation_nets``' policy)."""
    held, held_indices = None, None
    if is_pretrained(bundle.init_mode):
        held_indices = _held_out_indices(bundle, init, pool_path, report)
        if held_indices is not None:
            pool = Pool.load(report.pool)
            held_indices = held_indices[: n_nets or len(held_indices)]
            held = [pool.load_net(i, dev) for i in held_indices]
    n_fresh = (n_nets or 10) if draws_fresh_nets(bundle.init_mode) else 0
    nets = evaluation_nets(model, n_fresh=n_fresh, seed=seed, scheme=bundle.init_scheme,
                           stored=bundle.init_params, stored_index=init.get("pool_index"),
                           held_out=held, held_out_indices=held_indices, device=dev)
    if not nets:
        raise PoolError("this bundle has no nets to evaluate (no stored init, no held-out nets)")
    return [(net.group, net.pool_index, net.params) for net in nets]


def _held_out_indices(bundle: Bundle, init: dict, pool_path, report) -> list[int] | None:
    """The bundle's held-out pool nets, after checking the pool is the one it was made
    with; None (with a note) when the pool is gone but a stored net can still be tested."""
    pool_path = pool_path or init.get("pool")
    held = list(init.get("holdout_indices", []))
    if pool_path is None or not Path(pool_path).exists():
        if bundle.init_params is None:
            raise PoolError(f"the bundle's pool {pool_path} is not there; pass --pool POOL_DIR")
        report.notes.append(f"pool {pool_path} not found: only the stored net is evaluated")
        return None
    pool = Pool.load(pool_path)
    report.pool = str(pool_path)
    recorded = list(init.get("train_indices", [])) + held
    try:
        same = pool.content_hash(recorded) == init.get("pool_hash")
    except ConfigError:
        same = False
    if not same:
        raise PoolError(f"pool {pool_path} is not the pool this bundle was distilled with "
                        "(its nets changed or are missing)")
    if not held:
        report.notes.append("the bundle holds out no pool nets (--pool-holdout 0)")
    return held


def _metrics(conf: Tensor, a: int | None, b: int | None, kind: str) -> NetMetrics:
    rows = conf.sum(1).clamp(min=1).double()
    diag = conf.diag().double()
    m = NetMetrics(accuracy=(diag.sum() / conf.sum().clamp(min=1)).item(),
                   per_class=(diag / rows).tolist())
    if kind == "attack":
        keep = torch.arange(conf.shape[0]) != a
        m.other_accuracy = (diag[keep].sum() / conf[keep].sum().clamp(min=1)).item()
        m.success_rate = (conf[a, b] / rows[a]).item()
    return m
