"""The maths of dataset distillation, with no I/O: step maps, the unroll and its
meta-gradient, schedules, learned rates, networks as parameter dicts, metrics.

Example:
    >>> from ddcli.core import StepFn, unroll, lrs_from_raw  # doctest: +SKIP
    >>> final = unroll(StepFn(model), params, images, labels, lrs_from_raw(raw),
    ...                create_graph=False).params  # doctest: +SKIP
"""

from ddcli.core.metrics import accuracy, confusion, correct_counts, predictions
from ddcli.core.meta_gradient import NetsMetaGradient, meta_gradient, outer_loss
from ddcli.core.params import Params, init_params, stack_params
from ddcli.core.rates import initial_raw_lrs, lrs_from_raw, raw_from_lrs
from ddcli.core.schedules import CyclicSchedule, EpochSchedule, PoolSchedule
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import GD, SGD, Adam, StepFn, inner_loss
from ddcli.core.unroll import MetaGradient, Unrolled, adjoint_of, differentiate_unroll, unroll

__all__ = [
    "GD", "SGD", "Adam", "CyclicSchedule", "EpochSchedule", "MetaGradient", "NetsMetaGradient",
    "Params", "PoolSchedule", "StepFn", "Unrolled", "accuracy", "adjoint_of", "confusion",
    "correct_counts", "derive_seed", "differentiate_unroll", "init_params", "initial_raw_lrs",
    "inner_loss", "lrs_from_raw", "meta_gradient", "outer_loss", "predictions",
    "raw_from_lrs", "stack_params", "unroll",
]
