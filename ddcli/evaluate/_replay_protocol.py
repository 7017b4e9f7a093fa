"""The replay protocol (Wang et al. 2018): apply the learned steps with the learned rates.

A net starts from an init and takes T = steps x epochs plain GD steps, step t on the
images of step t mod S with rate lrs[t], exactly as in distillation but without
``create_graph``. Test accuracy on the full test set is measured before training and
after each pass over the steps (after every step with ``per_step``).

Which nets start is one function, ``initial_params``: a fixed-init bundle replays its
stored init (the number the method optimises) plus, labelled apart, ``n_nets`` fresh
random inits (the generalisation gap); a random-init bundle uses ``n_nets`` fresh inits.
Fresh net j is seeded ``derive_seed(seed, "eval", j)``, the seeds ``dd distill
--eval-every`` uses with the run's seed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddcli.bundle import Bundle
from ddcli.core.inner import InnerLoop
from ddcli.core.steps import GD
from ddcli.core.params import Params
from ddcli.errors import BundleFormatError, DDError
from ddcli.init_modes import draws_fresh_nets, is_seeded_fixed
from ddcli.evaluate.initial_nets import RANDOM, STORED, evaluation_nets
from ddcli.evaluate._many_nets import replay_accuracies
from ddcli.evaluate._job import Job, baseline_rows
from ddcli.evaluate._report import EvalRow


def initial_params(
    bundle: Bundle, model: nn.Module, n_nets: int, seed: int, *,
    scheme: str | None = None, device: torch.device | str = "cpu",
) -> list[tuple[str, Params]]:
    """The nets a replay starts from, each with its group label (``STORED`` or ``RANDOM``),
    as ``evaluation_nets`` picks them for the bundle's init mode.

    Args:
        bundle: decides the groups through ``init_mode``.
        model: the bundle's model (its structure shapes fresh inits).
        n_nets: fresh random inits.
        seed: fresh init j is seeded ``derive_seed(seed, "eval", j)``.
        scheme: weight init of fresh nets; default the bundle's ``init_scheme``.

    Raises:
        BundleFormatError: a fixed-init bundle without (matching) stored weights, or an
            init mode this function doesn't replay (pool bundles: ``ddcli.evaluate.pool_eval``).
    """
    mode = bundle.init_mode
    if not (is_seeded_fixed(mode) or draws_fresh_nets(mode)):
        raise BundleFormatError(f"replaying a {mode} bundle is pool evaluation "
                                "(ddcli.evaluate.evaluate picks it); not a fixed or random one")
    stored = bundle.init_params if is_seeded_fixed(mode) else None
    if is_seeded_fixed(mode):
        expected = {k: tuple(v.shape) for k, v in model.named_parameters()}
        if stored is None or {k: tuple(v.shape) for k, v in stored.items()} != expected:
            raise BundleFormatError(
                "this fixed-init bundle lacks the init weights for its model; it is damaged or "
                "was written by another tool (try --protocol train)"
            )
    nets = evaluation_nets(model, n_fresh=n_nets, seed=seed, scheme=scheme or bundle.init_scheme,
                           stored=stored, device=device)
    return [(net.group, net.params) for net in nets]


def inner_loop_of(bundle: Bundle, notes: list[str] | None = None) -> InnerLoop:
    """The inner loop a bundle was learned with (rule, schedule), from its stored config;
    the paper's (plain GD, ordered steps) for bundles from other tools."""
    paper = InnerLoop(steps=bundle.steps, images_per_step=bundle.images.shape[1],
                      length=int(bundle.raw_lrs.shape[0]), rule=GD())
    if not bundle.config:
        return paper
    try:
        inner = InnerLoop.from_config(bundle.config, bundle.images.shape[1])
    except DDError:
        inner = None
    if inner is None or inner.length != paper.length or inner.steps != paper.steps:
        if notes is not None:
            notes.append("the bundle's config doesn't describe its inner loop: replayed "
                         "with plain GD on the ordered steps")
        return paper
    return inner


def checkpoints(steps: int, total: int, per_step: bool) -> list[int]:
    """GD step counts to measure at: 0, every pass over the steps (or every step), T."""
    if per_step:
        return list(range(total + 1))
    return sorted({0, *range(steps, total + 1, steps), total})


def run_replay(job: Job, bundle: Bundle) -> list[EvalRow]:
    cfg, lrs = job.cfg, job.lrs
    assert lrs is not None
    nets = initial_params(bundle, job.model, cfg.n_nets, cfg.seed, scheme=cfg.init_scheme,
                          device=job.device)
    at = checkpoints(job.images.shape[0], lrs.shape[0], cfg.per_step)
    rows = []
    groups = [g for g in (STORED, RANDOM) if any(label == g for label, _ in nets)]
    for group in groups:
        inits = [p for label, p in nets if label == group]
        with job.stage(f"distilled · {group}") as timer:
            acc = replay_accuracies(job.model, inits, job.images, job.targets, lrs,
                                    job.test_x, job.test_y, at=at, batched=job.batched,
                                    inner=job.inner, seed=cfg.seed)
        rows.append(EvalRow("distilled", group, acc[-1].tolist(), at=at, curve=acc.tolist(),
                            seconds=timer["seconds"]))
    primary = groups[0]
    # Baseline evaluation i starts from the primary group's net i (the stored init for
    # every draw of a fixed-init bundle) and replays with the same learned rates.
    if primary == STORED:
        stored = next(p for label, p in nets if label == STORED)
        eval_inits, score_inits = [stored] * cfg.n_nets, [stored] * cfg.n_nets
    else:
        eval_inits = [p for label, p in nets if label == RANDOM]
        score_inits = job.fresh("score", cfg.n_nets) if "optimized-real" in cfg.baselines else []
    sample_x, sample_y = job.score_sample() if "optimized-real" in cfg.baselines else (None, None)

    def evaluate(sets: Tensor, shared: bool) -> list[float]:
        images = sets[0] if shared else sets
        inits = eval_inits[:1] if shared and primary == STORED else eval_inits
        return replay_accuracies(job.model, inits, images, job.baseline_targets, lrs, job.test_x,
                                 job.test_y, batched=job.batched, inner=job.inner,
                                 seed=cfg.seed)[-1].tolist()

    def scorer(i: int):
        def score(candidates: Tensor) -> Tensor:  # (K, S, n, C, H, W) -> (K,)
            k = candidates.shape[0]
            return replay_accuracies(job.model, [score_inits[i]] * k, candidates.to(job.device),
                                     job.baseline_targets, lrs, sample_x, sample_y,
                                     batched=job.batched, inner=job.inner, seed=cfg.seed)[-1]
        return score

    return rows + baseline_rows(job, primary, evaluate, scorer)
