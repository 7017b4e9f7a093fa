"""Baselines built from real training data, with the same layout as a distilled set.

Every set baseline fills the slots of a label layout (S, n) -- the distilled set's own
labels -- with real-data images of the slot's class, so it has the same steps, images
per class per step and classes, and is evaluated with the same protocol and rates:

- ``random-real``: distinct random training images of each slot's class.
- ``optimized-real``: the best of ``candidates`` random-real draws under a scoring
  function that only sees *training* data (the evaluation passes one that replays or
  trains from the protocol's scoring init and measures accuracy on a training sample).
- ``kmeans``: per class, k-means (k-means++ seeding, then Lloyd) with one centre per
  slot of that class, i.e. k = steps x images per class per step. Centres are sorted by
  cluster size, largest first, and dealt to the class's slots in step order, so step 0
  gets the most typical images.
- ``class-mean``: the class's mean training image in every slot of that class (with
  several slots per class the copies are identical; that is the baseline's point).
- ``knn``: not a set but a classifier: 1-nearest-neighbour (Euclidean, normalised pixels)
  with a set's images as the only references, no training. The evaluation applies it to
  the distilled images and to each other baseline's images.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ddcli.core.seeds import derive_seed
from ddcli.data import RealData
from ddcli.errors import ConfigError

BASELINES = ("random-real", "optimized-real", "kmeans", "class-mean", "knn")
#: baselines that build an image set (``knn`` is a classifier over sets)
SET_BASELINES = BASELINES[:-1]
#: baselines whose set doesn't depend on the seed
DETERMINISTIC = ("class-mean",)

Scorer = Callable[[Tensor], Tensor]  # (K, S, n, C, H, W) candidate sets -> (K,) scores


def check_baselines(names) -> tuple[str, ...]:
    """Validate and de-duplicate baseline names, keeping ``BASELINES`` order."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(
            f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)} (or --compare)"
        )
    return tuple(n for n in BASELINES if n in set(names))


def build_baseline(
    name: str,
    labels: Tensor,
    real: RealData,
    *,
    seed: int = 0,
    candidates: int = 10,
    score: Scorer | None = None,
) -> Tensor:
    """Build a baseline image set from real training data in the layout of ``labels``.

    Args:
        name: one of ``SET_BASELINES``.
        labels: (S, n) class of every slot (the distilled set's labels).
        real: the dataset; only its training split is used.
        seed: draws are reproducible from it.
        candidates: ``optimized-real`` only: random draws to choose from.
        score: ``optimized-real`` only: maps (K, S, n, C, H, W) candidates to (K,)
            scores on training data; default, 1-NN accuracy on 1024 training images.

    Returns:
        Images (S, n, C, H, W), normalised like ``real``.

    Example:
        >>> imgs = build_baseline("class-mean", bundle.labels, data)  # doctest: +SKIP
    """
    if name not in SET_BASELINES:
        raise ConfigError(f"unknown set baseline {name!r}; choose from {', '.join(SET_BASELINES)}")
    if name == "random-real":
        return _random_real(labels, real, seed)
    if name == "class-mean":
        return _fill(labels, real, lambda c, x, k: x.mean(0, keepdim=True).expand(k, *x.shape[1:]))
    if name == "kmeans":
        gen = torch.Generator().manual_seed(derive_seed(seed, "kmeans"))
        return _fill(labels, real, lambda c, x, k: _kmeans_slots(x, k, gen))
    draws = torch.stack([
        _random_real(labels, real, derive_seed(seed, "candidate", c)) for c in range(candidates)
    ])  # (K, S, n, C, H, W)
    scores = (score or _nearest_neighbour_scorer(labels, real, seed))(draws)
    return draws[int(torch.argmax(scores))]


def _class_images(real: RealData, c: int) -> Tensor:
    x = real.train_x[real.train_y == c]
    if x.shape[0] == 0:
        raise ConfigError(f"class {real.classes[c]!r} has no training images to build a baseline")
    return x


def _fill(labels: Tensor, real: RealData, pick: Callable[[int, Tensor, int], Tensor]) -> Tensor:
    """Images for every slot: ``pick(class, its training images, slots)`` per class."""
    flat = labels.reshape(-1)
    out = torch.empty(flat.shape[0], *real.train_x.shape[1:])  # (S * n, C, H, W)
    for c in flat.unique().tolist():
        slots = (flat == c).nonzero().squeeze(1)  # step-major order
        out[slots] = pick(c, _class_images(real, c), slots.numel())
    return out.reshape(*labels.shape, *real.train_x.shape[1:])


def _random_real(labels: Tensor, real: RealData, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(derive_seed(seed, "random-real"))

    def pick(c: int, x: Tensor, k: int) -> Tensor:
        if x.shape[0] >= k:
            return x[torch.randperm(x.shape[0], generator=gen)[:k]]
        return x[torch.randint(x.shape[0], (k,), generator=gen)]  # too few: repeat some

    return _fill(labels, real, pick)


def _kmeans_slots(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    centres, sizes = kmeans(x.reshape(x.shape[0], -1), k, generator=gen)
    order = torch.argsort(sizes, descending=True, stable=True)
    return centres[order].reshape(k, *x.shape[1:])


def kmeans(
    x: Tensor, k: int, *, generator: torch.Generator, iterations: int = 100
) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then Lloyd's iterations until assignments stop changing.

    Args:
        x: (N, D) points.
        k: number of centres.
        generator: seeds the k-means++ draws.

    Returns:
        Centres (k, D) and cluster sizes (k,). With k >= N every point is a centre
        (repeated as needed).
    """
    n = x.shape[0]
    if k >= n:
        idx = torch.arange(k) % n
        return x[idx].clone(), torch.ones(k, dtype=torch.long)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)  # (N,) squared distance to the nearest centre
    for _ in range(1, k):
        # D^2 sampling; all-zero distances (duplicates) fall back to a uniform pick
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centres)  # (k, D)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iterations):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        # an emptied cluster keeps its old centre
        c = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None], c)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return c, torch.bincount(assign, minlength=k)


@torch.no_grad()
def knn_accuracy(
    images: Tensor, labels: Tensor, x: Tensor, y: Tensor, *, chunk: int = 4096
) -> float:
    """Accuracy of 1-nearest-neighbour classification of (x, y) against (images, labels).

    Args:
        images: (M, C, H, W) reference images (e.g. a distilled set, flattened).
        labels: (M,) their classes.
        x: (N, C, H, W) images to classify; y: (N,) their true classes.
    """
    refs = images.reshape(images.shape[0], -1).to(x.device)  # (M, D)
    labels = labels.to(x.device)
    correct = 0
    for start in range(0, x.shape[0], chunk):
        q = x[start : start + chunk].reshape(-1, refs.shape[1])  # (B, D)
        nearest = torch.cdist(q, refs).argmin(1)
        correct += int((labels[nearest] == y[start : start + chunk]).sum())
    return correct / max(1, x.shape[0])


def _nearest_neighbour_scorer(labels: Tensor, real: RealData, seed: int) -> Scorer:
    gen = torch.Generator().manual_seed(derive_seed(seed, "score-sample"))
    pick = torch.randperm(real.train_x.shape[0], generator=gen)[:1024]
    sx, sy = real.train_x[pick], real.train_y[pick]
    flat = labels.reshape(-1)

    def score(draws: Tensor) -> Tensor:
        refs = draws.reshape(draws.shape[0], flat.shape[0], *draws.shape[-3:])
        return torch.tensor([knn_accuracy(r, flat, sx, sy) for r in refs])

    return score
