"""The train protocols (train, dc, dsa, mtt): fresh nets trained on the images with SGD.

Each of ``n_nets`` fresh nets (net j seeded ``derive_seed(seed, "eval", j)``) trains on
the set's images for ``train_epochs`` epochs: a new shuffle each epoch (net j's order
from ``derive_seed(seed, "shuffle", j)``), batches of 256, SGD with momentum 0.9 and
weight decay 5e-4, the lr times ``lr_decay`` after ``decay_epoch`` epochs, augmentation
if the protocol has it. ``ddcli.evaluate.protocols`` resolves every knob before this
runs. Only the images, labels, rates, model and seed enter, so a bundle and its
``.pt``/``.npz``/ImageFolder exports score the same.

Baseline evaluation i trains net i on draw i. ``optimized-real`` scores each candidate
by training a separate scoring net on it for ``score_epochs(train_epochs)`` epochs and
measuring accuracy on a sample of training images.
"""

from __future__ import annotations

from torch import Tensor

from ddcli.core.augment import parse_augment
from ddcli.core.seeds import derive_seed
from ddcli.evaluate._many_nets import train_accuracies
from ddcli.evaluate._job import Job, baseline_rows
from ddcli.evaluate._report import FRESH, EvalRow


def score_epochs(train_epochs: int) -> int:
    """Epochs of the short run that scores an optimized-real candidate."""
    return max(1, train_epochs // 10)


def run_train(job: Job, lr: float) -> list[EvalRow]:
    cfg = job.cfg
    nets = job.fresh("eval", cfg.n_nets)
    seeds = [derive_seed(cfg.seed, "shuffle", j) for j in range(cfg.n_nets)]
    x = job.images.reshape(-1, *job.images.shape[2:])  # (M, C, H, W)
    y = job.targets.reshape(x.shape[0], *job.targets.shape[2:])  # (M,) or (M, classes)
    yb = job.baseline_targets.reshape(x.shape[0], *job.baseline_targets.shape[2:])
    augment = parse_augment(cfg.augment)

    def train(inits, xs: Tensor, ys: Tensor, net_seeds, test_x, test_y, epochs) -> Tensor:
        # the protocol's decay epoch for its own length; a scoring run decays at its half
        decay = cfg.decay_epoch if epochs == cfg.train_epochs else None
        return train_accuracies(
            job.model, inits, xs, ys, test_x, test_y, lr=lr, epochs=epochs, seeds=net_seeds,
            batch_size=cfg.batch_size, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            lr_decay=cfg.lr_decay, decay_epoch=decay, reset_momentum=cfg.reset_momentum,
            batched=False if cfg.compile else job.batched, augment=augment,
            compiled=cfg.compile,
            progress=job.progress("training nets", "net-epochs"),
        )

    with job.stage(f"distilled · {FRESH}") as timer:
        acc = train(nets, x, y, seeds, job.test_x, job.test_y, cfg.train_epochs)
    rows = [EvalRow("distilled", FRESH, acc.tolist(), seconds=timer["seconds"])]
    need_score = "optimized-real" in cfg.baselines
    score_nets = job.fresh("score", cfg.n_nets) if need_score else []
    sample_x, sample_y = job.score_sample() if need_score else (None, None)

    def evaluate(sets: Tensor, shared: bool) -> list[float]:
        flat = sets.reshape(sets.shape[0], -1, *sets.shape[-3:])  # (D, M, C, H, W)
        if shared:
            return train(nets, flat[0], yb, seeds, job.test_x, job.test_y,
                         cfg.train_epochs).tolist()
        ys = yb.expand(flat.shape[0], *yb.shape)
        return train(nets, flat, ys, seeds, job.test_x, job.test_y, cfg.train_epochs).tolist()

    def scorer(i: int):
        def score(candidates: Tensor) -> Tensor:  # (K, S, n, C, H, W) -> (K,)
            k = candidates.shape[0]
            flat = candidates.reshape(k, -1, *candidates.shape[-3:]).to(job.device)
            cand_seeds = [derive_seed(cfg.seed, "score-shuffle", i, c) for c in range(k)]
            return train([score_nets[i]] * k, flat, yb.expand(k, *yb.shape), cand_seeds, sample_x,
                         sample_y, score_epochs(cfg.train_epochs))
        return score

    return rows + baseline_rows(job, FRESH, evaluate, scorer)
