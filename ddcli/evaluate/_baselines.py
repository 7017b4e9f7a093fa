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

from typing import Callable, Sequence

import torch
from torch import Tensor

from ddcli.core.seeds import derive_seed
from ddcli.data import RealData
from ddcli.errors import ConfigError
from ddcli.progress import ProgressInfo

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
    on_progress: Callable[[ProgressInfo], None] | None = None,
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
        on_progress: ``kmeans`` only: called with a ``ProgressInfo`` ("kmeans", classes
            done, classes) after each class's clustering.

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
        return kmeans_sets(labels, real, [seed], on_progress)[0]
    draws = torch.stack([
        _random_real(labels, real, derive_seed(seed, "candidate", c)) for c in range(candidates)
    ])  # (K, S, n, C, H, W)
    scores = (score or _nearest_neighbour_scorer(labels, real, seed))(draws)
    return draws[int(torch.argmax(scores))]


def kmeans_sets(
    labels: Tensor,
    real: RealData,
    seeds: Sequence[int],
    on_progress: Callable[[ProgressInfo], None] | None = None,
) -> Tensor:
    """The ``kmeans`` baseline sets of several seeds, (D, S, n, C, H, W): the same sets
    as ``build_baseline("kmeans", labels, real, seed=s)`` for each seed, with every
    class's clusterings for all the seeds run in lockstep (``kmeans_lockstep``).

    ``on_progress`` hears ("kmeans", classes done, classes) after each class.
    """
    out = torch.empty(len(seeds), labels.numel(), *real.train_x.shape[1:])  # (D, S * n, ...)
    gens = [torch.Generator().manual_seed(derive_seed(s, "kmeans")) for s in seeds]
    classes = _class_slots(labels)
    for done, (c, slots) in enumerate(classes, 1):
        x = _class_images(real, c)
        runs = kmeans_lockstep(x.reshape(x.shape[0], -1), slots.numel(), gens)
        for d, (centres, sizes) in enumerate(runs):
            # largest cluster first, dealt to the class's slots in step order
            order = torch.argsort(sizes, descending=True, stable=True)
            out[d, slots] = centres[order].reshape(-1, *x.shape[1:])
        if on_progress is not None:
            on_progress(ProgressInfo("kmeans", done, len(classes), f"class {real.classes[c]}"))
    return out.reshape(len(seeds), *labels.shape, *real.train_x.shape[1:])


def _class_slots(labels: Tensor) -> list[tuple[int, Tensor]]:
    """(class, its slots' flat indices in step-major order) for every class in ``labels``."""
    flat = labels.reshape(-1)
    return [(c, (flat == c).nonzero().squeeze(1)) for c in flat.unique().tolist()]


def _class_images(real: RealData, c: int) -> Tensor:
    x = real.train_x[real.train_y == c]
    if x.shape[0] == 0:
        raise ConfigError(f"class {real.classes[c]!r} has no training images to build a baseline")
    return x


def _fill(labels: Tensor, real: RealData, pick: Callable[[int, Tensor, int], Tensor]) -> Tensor:
    """Images for every slot: ``pick(class, its training images, slots)`` per class."""
    out = torch.empty(labels.numel(), *real.train_x.shape[1:])  # (S * n, C, H, W)
    for c, slots in _class_slots(labels):
        out[slots] = pick(c, _class_images(real, c), slots.numel())
    return out.reshape(*labels.shape, *real.train_x.shape[1:])


def _random_real(labels: Tensor, real: RealData, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(derive_seed(seed, "random-real"))

    def pick(c: int, x: Tensor, k: int) -> Tensor:
        if x.shape[0] >= k:
            return x[torch.randperm(x.shape[0], generator=gen)[:k]]
        return x[torch.randint(x.shape[0], (k,), generator=gen)]  # too few: repeat some

    return _fill(labels, real, pick)


def kmeans(
    x: Tensor, k: int, *, generator: torch.Generator, iterations: int = 50,
    tol: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then at most ``iterations`` of Lloyd's algorithm.

    Lloyd stops early once an iteration lowers the inertia (the mean squared distance
    to the nearest centre) by less than ``tol`` of itself, or changes no assignment.
    On MNIST classes that is after 18 to 30 iterations (instead of about 90 to full
    convergence), with the inertia within 0.3 % of its converged value; a looser 1e-3
    stops after about 10, but measurably weakens the baseline (docs/benchmarks.md).
    An iteration is one float32 matmul for the distances of all points to all centres,
    ``||x||^2 - 2 x.c + ||c||^2``; the clusters' sums are updated for the points that
    changed cluster only.

    Args:
        x: (N, D) points.
        k: number of centres.
        generator: seeds the k-means++ draws; the result is a function of it.
        iterations: the most Lloyd iterations.
        tol: relative decrease of the inertia below which Lloyd stops.

    Returns:
        Centres (k, D), the means of their clusters, and cluster sizes (k,). With
        k >= N every point is a centre (repeated as needed).
    """
    return kmeans_lockstep(x, k, [generator], iterations=iterations, tol=tol)[0]


def kmeans_lockstep(
    x: Tensor, k: int, generators: Sequence[torch.Generator], *, iterations: int = 50,
    tol: float = 1e-4,
) -> list[tuple[Tensor, Tensor]]:
    """``[kmeans(x, k, generator=g) for g in generators]``, run side by side.

    Each run is the algorithm of ``kmeans`` with its own generator, its own stopping
    rule and the same draws in the same order, but every pass over ``x`` computes the
    distances to the centres of all the runs still going in one matmul. k-means on a
    class is bound by reading its images (about 35 passes of 6,000 x 784 floats on
    MNIST), so R runs in lockstep cost far less than R runs one after another
    (docs/benchmarks.md, "k-means baseline").

    Returns:
        One (centres (k, D), sizes (k,)) per generator, as ``kmeans`` returns them.
    """
    x = x.float()
    n, runs = x.shape[0], len(generators)
    if k >= n:
        idx = torch.arange(k) % n
        return [(x[idx].clone(), torch.ones(k, dtype=torch.long)) for _ in range(runs)]
    x_sq = (x * x).sum(1)  # (N,)
    centres = _kmeans_pp_lockstep(x, x_sq, k, generators)  # (R, k, D)
    assign, inertia = [], []
    for values, indices in _nearest(x, x_sq, centres):
        assign.append(indices)
        inertia.append(float(values.mean()))
    assign = torch.stack(assign)  # (R, N)
    sums = torch.stack([torch.zeros_like(centres[r]).index_add_(0, assign[r], x)
                        for r in range(runs)])  # (R, k, D)
    counts = torch.stack([torch.bincount(a, minlength=k) for a in assign])  # (R, k)
    going = list(range(runs))
    for _ in range(iterations):
        if not going:
            break
        active = torch.tensor(going)
        centres[active] = _cluster_means(sums[active], counts[active], centres[active])
        still = []
        for r, (values, indices) in zip(going, _nearest(x, x_sq, centres[active])):
            previous, inertia[r] = inertia[r], float(values.mean())
            moved = (indices != assign[r]).nonzero().squeeze(1)  # points changing cluster
            if moved.numel() == 0:
                continue
            # Only the points that changed cluster change the sums: after the first
            # iterations they are a few percent, so this is much less than a pass over x.
            old, new, xs = assign[r, moved], indices[moved], x[moved]
            sums[r].index_add_(0, new, xs).index_add_(0, old, xs, alpha=-1)
            counts[r] += torch.bincount(new, minlength=k) - torch.bincount(old, minlength=k)
            assign[r] = indices
            if previous - inertia[r] > tol * inertia[r]:
                still.append(r)
        going = still
    out = []
    for r in range(runs):
        # The exact means of the final clusters (the updated sums carry rounding).
        sums_r = torch.zeros_like(centres[r]).index_add_(0, assign[r], x)
        counts_r = torch.bincount(assign[r], minlength=k)
        out.append((_cluster_means(sums_r, counts_r, centres[r]), counts_r))
    return out


def _nearest(x: Tensor, x_sq: Tensor, centres: Tensor) -> list[tuple[Tensor, Tensor]]:
    """For each of R runs' centres (R, k, D): (values, indices) of every point's nearest
    centre of that run, from one matmul over all R * k centres."""
    runs, k = centres.shape[:2]
    d2 = _sq_distances(x, x_sq, centres.reshape(runs * k, -1))  # (R * k, N)
    return [(m.values, m.indices) for m in (d2[r * k : (r + 1) * k].min(0) for r in range(runs))]


def _cluster_means(sums: Tensor, counts: Tensor, centres: Tensor) -> Tensor:
    """(..., k, D) means from sums and counts (..., k); an emptied cluster keeps its old
    centre."""
    return torch.where((counts > 0)[..., None], sums / counts.clamp(min=1)[..., None], centres)


def _kmeans_pp_lockstep(x: Tensor, x_sq: Tensor, k: int,
                        generators: Sequence[torch.Generator]) -> Tensor:
    """k-means++ seeding of R runs, (R, k, D): each centre drawn with probability
    proportional to D^2, the squared distance to the run's nearest centre so far; each
    run draws from its own generator, and each round is one matmul for all runs."""
    n = x.shape[0]
    chosen = [[int(torch.randint(n, (1,), generator=g))] for g in generators]
    d2 = _sq_distances(x, x_sq, x[[c[0] for c in chosen]])  # (R, N)
    for _ in range(1, k):
        for r, g in enumerate(generators):
            # all-zero distances (duplicates) fall back to a uniform pick
            weights = d2[r] if float(d2[r].sum()) > 0 else torch.ones_like(d2[r])
            chosen[r].append(int(torch.multinomial(weights, 1, generator=g)))
        d2 = torch.minimum(d2, _sq_distances(x, x_sq, x[[c[-1] for c in chosen]]))
    return torch.stack([x[c] for c in chosen])


def _sq_distances(x: Tensor, x_sq: Tensor, c: Tensor, cols: int = 2048) -> Tensor:
    """(k, N) squared Euclidean distances from matmuls, ``cols`` points at a time.

    Centres-major (``c @ x.T``) and in blocks of ~2048 points: on CPUs, for the k of a
    few tens that baselines use, both are faster than one ``x @ c.T``
    (docs/benchmarks.md, "k-means baseline").
    """
    c_sq = (c * c).sum(1, keepdim=True)  # (k, 1)
    out = [(c_sq - 2 * (c @ x[i : i + cols].T) + x_sq[i : i + cols]).clamp_(min=0)
           for i in range(0, x.shape[0], cols)]
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


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
