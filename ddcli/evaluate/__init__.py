"""Evaluating distilled sets: train fresh networks on them, compare with real-data baselines.

Two protocols (``EvalConfig.protocol``):

- ``replay`` (Wang et al. 2018, the default for bundles): apply the learned steps with
  the learned rates from the stored init (fixed-init bundles) and from fresh random inits.
- ``train`` (the DC/DSA/DM/MTT papers): SGD on the images for 300 epochs, with any
  registered model; also for ``.pt``/``.npz``/ImageFolder sets made by other tools.

Baselines (``BASELINES``) build sets of the same layout from real training data and are
evaluated with the same protocol and rates; ``knn`` classifies with a set's images as
1-NN references. Many nets run at once through ``torch.func.vmap``.

Example:
    >>> from ddcli.evaluate import evaluate_bundle, BASELINES
    >>> report = evaluate_bundle("m.safetensors", baselines=BASELINES)  # doctest: +SKIP
    >>> for row in report.rows:  # doctest: +SKIP
    ...     print(row.label, f"{row.mean:.2%} ± {row.std:.2%}")
"""

from ddcli.evaluate._baselines import BASELINES, build_baseline, kmeans, knn_accuracy
from ddcli.evaluate._nets import replay_accuracies, train_accuracies, train_nets
from ddcli.evaluate._evaluate import evaluate, evaluate_bundle, evaluate_set
from ddcli.evaluate._job import StageInfo
from ddcli.evaluate._replay_protocol import initial_params
from ddcli.evaluate._report import EvalConfig, EvalReport, EvalRow, record_report, sidecar_path
from ddcli.evaluate._sets import ImageSet, load_image_set

__all__ = [
    "BASELINES",
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
    "knn_accuracy",
    "load_image_set",
    "record_report",
    "replay_accuracies",
    "sidecar_path",
    "train_accuracies",
    "train_nets",
]
