"""Evaluating distilled sets: train fresh networks on them, compare with real-data baselines.

Two protocols (``EvalConfig.protocol``):

- ``replay`` (Wang et al. 2018, the default for bundles): apply the learned steps with
  the learned rates from the stored init (fixed-init bundles) and from fresh random inits.
- ``train`` (the DC/DSA/DM/MTT papers): SGD on the images for 300 epochs, with any
  registered model; also for ``.pt``/``.npz``/ImageFolder sets made by other tools.

Bundles distilled from a pretrained pool, and adapt and attack bundles, are evaluated
on the pool's held-out nets before and after the distilled steps (``evaluate`` picks
this itself; ``PoolEvalReport``). Which nets every evaluation starts from is one policy,
``evaluation_nets``.

Baselines (``BASELINES``) build sets of the same layout from real training data and are
evaluated with the same protocol and rates; ``knn`` classifies with a set's images as
1-NN references. Many nets run at once through ``torch.func.vmap``.

Example:
    >>> from ddcli.evaluate import evaluate_bundle, BASELINES
    >>> report = evaluate_bundle("m.safetensors", baselines=BASELINES)  # doctest: +SKIP
    >>> for row in report.rows:  # doctest: +SKIP
    ...     print(row.label, f"{row.mean:.2%} ± {row.std:.2%}")
"""

from ddcli.evaluate._baselines import (
    BASELINES, build_baseline, kmeans, kmeans_lockstep, kmeans_sets, knn_accuracy,
)
from ddcli.evaluate._many_nets import replay_accuracies, train_accuracies, train_nets
from ddcli.evaluate._evaluate import evaluate, evaluate_bundle, evaluate_set
from ddcli.evaluate._job import StageInfo
from ddcli.evaluate._replay_protocol import initial_params
from ddcli.evaluate._report import EvalConfig, EvalReport, EvalRow, record_report, sidecar_path
from ddcli.evaluate._sets import ImageSet, load_image_set
from ddcli.evaluate.initial_nets import HELD_OUT, RANDOM, STORED, EvalNet, evaluation_nets
from ddcli.evaluate.pool_eval import PoolEvalReport, evaluate_pool_bundle, is_pool_bundle
from ddcli.evaluate.pool_report import pool_report_lines

__all__ = [
    "BASELINES",
    "HELD_OUT",
    "RANDOM",
    "STORED",
    "EvalNet",
    "PoolEvalReport",
    "evaluate_pool_bundle",
    "evaluation_nets",
    "is_pool_bundle",
    "pool_report_lines",
    "EvalConfig",
    "EvalReport",
    "EvalRow",
    "ImageSet",
    "StageInfo",
    "build_baseline",
    "evaluate",
    "evaluate_bundle",
    "evaluate_set",
    "initial_params",
    "kmeans",
    "kmeans_lockstep",
    "kmeans_sets",
    "knn_accuracy",
    "load_image_set",
    "record_report",
    "replay_accuracies",
    "sidecar_path",
    "train_accuracies",
    "train_nets",
]
