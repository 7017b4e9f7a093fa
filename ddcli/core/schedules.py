"""Schedules: which synthetic images, targets and rate each inner step uses.

A schedule is a pure function of the step index t (a recomputing backward pass asks for
step t again, in reverse order, and must get the same inputs):

- ``CyclicSchedule``, the paper's: S ordered steps cycled E times; step t uses all
  images of step t mod S and rate t.
- ``PoolSchedule``, RaT-BPTT's set-structured loop: the S x n images are one pool;
  step t uses a minibatch of K of them, from a fresh shuffle of the pool on every pass
  over it, and rate t.
- ``BalancedSchedule``, the published RaT-BPTT code's draw: the same pool, but step t
  uses K images of every class, drawn afresh for each step.
- ``EpochSchedule``, the train protocol's: SGD epochs over the images in minibatches,
  each net in its own shuffled order; forward only (it draws each epoch's order as it
  reaches it).

Each returns, for step t, ``(x, y)`` built from the images and labels it is given
(leaves of the meta-gradient, so indexing stays differentiable) and ``rate_index(t)``.
An ``augment`` function (``ddcli.core.augment``) may transform x, seeded by t.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from ddcli.core.seeds import derive_seed

# (x, step t) -> augmented x; a pure function of its arguments (seeded by t).
Augment = Callable[[Tensor, int], Tensor]


class Schedule(Protocol):
    length: int  # inner steps T

    def inputs(self, t: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]: ...

    def rate_index(self, t: int) -> int: ...


class CyclicSchedule:
    """Step t uses images[t mod S] and labels[t mod S] (the paper's ordered steps).

    Args:
        steps: S.
        length: T, the number of GD steps (S x epochs).
        per_net: images carry a leading net dimension, (N, S, n, C, H, W).
        augment: optional, applied to each step's images.
    """

    def __init__(self, steps: int, length: int, *, per_net: bool = False,
                 augment: Augment | None = None) -> None:
        self.steps, self.length, self.per_net, self.augment = steps, length, per_net, augment

    def inputs(self, t: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        s = t % self.steps
        x = images[:, s] if self.per_net else images[s]  # (N, n, ...) or (n, ...)
        if self.augment is not None:
            x = self.augment(x, t)
        return x, labels[s]

    def rate_index(self, t: int) -> int:
        return t


class PoolSchedule:
    """Step t uses K images of the pool (S x n images, flattened), drawn without
    replacement within each pass over the pool; every pass is a fresh shuffle seeded
    by (seed, pass), so a schedule is a pure function of (seed, t).

    Args:
        pool_size: M = S x n.
        batch: K images per step (K >= M: every step uses the whole pool).
        length: T inner steps.
        seed: e.g. derived from (run seed, outer iteration).
        per_net: images carry a leading net dimension, (N, S, n, C, H, W).
        augment: optional, applied to each step's images.
    """

    def __init__(self, pool_size: int, batch: int, length: int, seed: int, *,
                 per_net: bool = False, augment: Augment | None = None) -> None:
        self.pool_size, self.batch = pool_size, min(batch, pool_size)
        self.length, self.seed, self.augment, self.per_net = length, seed, augment, per_net
        per_pass = max(1, pool_size // self.batch)
        passes = -(-length // per_pass)
        orders = [torch.randperm(pool_size, generator=torch.Generator().manual_seed(
            derive_seed(seed, "pool-pass", p))) for p in range(passes)]
        # (T, K): pool indices of each step; an incomplete tail of a pass is skipped.
        self.indices = torch.stack([
            orders[t // per_pass][(t % per_pass) * self.batch:(t % per_pass + 1) * self.batch]
            for t in range(length)])

    def inputs(self, t: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return _pool_inputs(self.indices[t], images, labels, self.per_net, self.augment, t)

    def rate_index(self, t: int) -> int:
        return t


class BalancedSchedule:
    """Step t uses K images of every class of the pool (S x n images, flattened), K of
    each class's m drawn without replacement for that step alone, as RaT-BPTT's published
    code draws its inner minibatches (``randperm(m)[:K]`` per class, sorted). Every draw
    comes from one generator seeded by ``seed``, so a schedule is a pure function of
    (seed, t); a step's images are class-major, each class's in pool order.

    Args:
        slot_classes: (M,) the class of each pool slot; every class has the same m >= K.
        per_class: K.
        length: T inner steps.
        seed: e.g. derived from (run seed, outer iteration).
        per_net: images carry a leading net dimension, (N, S, n, C, H, W).
        augment: optional, applied to each step's images.
    """

    def __init__(self, slot_classes: Tensor, per_class: int, length: int, seed: int, *,
                 per_net: bool = False, augment: Augment | None = None) -> None:
        classes = slot_classes.unique()
        # (C, m): the pool slots of each class, in pool order.
        slots = torch.stack([(slot_classes == c).nonzero().flatten() for c in classes])
        if not 0 < per_class <= slots.shape[1]:
            raise ValueError(f"{per_class} images per class per step, but a class has "
                             f"{slots.shape[1]} in the pool")
        self.length, self.seed, self.augment, self.per_net = length, seed, augment, per_net
        g = torch.Generator().manual_seed(derive_seed(seed, "balanced-draws"))
        # Uniform keys, argsorted: a uniformly random permutation of each class's m slots
        # for every step, of which the first K are kept.
        picks = torch.rand(length, *slots.shape, generator=g).argsort(-1)[..., :per_class]
        picks = picks.sort(-1).values  # (T, C, K) positions within each class
        self.indices = slots[torch.arange(slots.shape[0])[:, None], picks].flatten(1)  # (T, C*K)

    def inputs(self, t: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return _pool_inputs(self.indices[t], images, labels, self.per_net, self.augment, t)

    def rate_index(self, t: int) -> int:
        return t


class EpochSchedule:
    """SGD epochs over M images in batches of B; net j visits them in its own order each
    epoch, drawn from ``torch.Generator().manual_seed(seeds[j])``; the rate index is 0
    for the first ``decay_epoch`` epochs (default half) and 1 after (the protocol decays
    the lr there).

    Args:
        size: M images (shared by the nets, or per net with ``per_net``).
        batch: B.
        epochs: passes over the images.
        seeds: one per net; a single net uses ``seeds[0]``.
        batched: the nets are stacked; inputs get a leading net dimension.
        per_net: each net has its own images, (N, M, C, H, W) and labels (N, M).
        augment: optional, ``augment(x, seed)`` (e.g. ``DSA``) on each net's batch, net
            j's seeded by (seeds[j], t): the same whether the nets run stacked or alone.
        decay_epoch: epochs at rate index 0 (default ``max(1, epochs // 2)``).
    """

    def __init__(self, size: int, batch: int, epochs: int, seeds: Sequence[int], *,
                 batched: bool, per_net: bool = False,
                 augment: Callable[[Tensor, int], Tensor] | None = None,
                 decay_epoch: int | None = None) -> None:
        self.size, self.batch, self.epochs = size, batch, epochs
        self.per_epoch = -(-size // batch)  # the last batch may be short
        self.length = epochs * self.per_epoch
        self.half = max(1, epochs // 2) if decay_epoch is None else decay_epoch
        self.decay_step = min(self.length, self.half * self.per_epoch)  # first step at rate 1
        self.batched, self.per_net, self.augment = batched, per_net, augment
        self.seeds = list(seeds)
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]
        self._epoch, self._order = -1, None

    def inputs(self, t: int, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            if epoch != self._epoch + 1:
                raise ValueError("EpochSchedule is forward-only: steps must come in order")
            self._epoch = epoch
            orders = [torch.randperm(self.size, generator=g) for g in self._gens]
            self._order = torch.stack(orders).to(images.device)  # (N, M)
        idx = self._order[:, i * self.batch:(i + 1) * self.batch]  # (N, B)
        if not self.batched:
            x, y = images[idx[0]], labels[idx[0]]
        elif self.per_net:
            rows = torch.arange(idx.shape[0], device=idx.device)[:, None]  # (N, 1)
            x, y = images[rows, idx], labels[rows, idx]  # (N, B, ...)
        else:
            x, y = images[idx], labels[idx]  # (N, B, ...)
        if self.augment is not None:
            seeds = [derive_seed(s, "train-augment", t) for s in self.seeds]
            x = (torch.stack([self.augment(xj, sj) for xj, sj in zip(x, seeds)])
                 if self.batched else self.augment(x, seeds[0]))
        return x, y

    def rate_index(self, t: int) -> int:
        return 0 if t // self.per_epoch < self.half else 1


def _pool_inputs(idx: Tensor, images: Tensor, labels: Tensor, per_net: bool,
                 augment: Augment | None, t: int) -> tuple[Tensor, Tensor]:
    """The pool slots ``idx`` (K,) of images (S, n, ...) and their labels."""
    idx = idx.to(images.device)
    if per_net:  # (N, S, n, C, H, W): every net its own pool, the same slots
        x = images.flatten(1, 2)[:, idx]  # (N, K, C, H, W)
    else:
        x = images.flatten(0, 1)[idx]  # (K, C, H, W)
    y = labels.flatten(0, 1)[idx.to(labels.device)]  # (K,) or (K, classes)
    if augment is not None:
        x = augment(x, t)
    return x, y
