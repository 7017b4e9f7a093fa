"""A validation split carved from the training images: what model selection scores on.

``dd distill --validation N`` keeps the N images out of every real batch (and scores
``--eval-every`` on them); ``dd eval --validation N`` scores fresh nets on the same N
images instead of the test set and draws its baselines from the rest. The images are
picked by a permutation seeded by the training set's size alone, so every run and every
evaluation on a dataset holds out the same ones, whatever their seeds.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ddcli.core.seeds import derive_seed
from ddcli.data._realdata import RealData
from ddcli.errors import ConfigError


def validation_split(n: int, size: int) -> tuple[Tensor, Tensor]:
    """(train, validation) indices of a training set of ``n``: ``size`` images held out.

    Example:
        >>> train, val = validation_split(10, 3)
        >>> len(train), len(val), sorted(set(train.tolist()) | set(val.tolist())) == list(range(10))
        (7, 3, True)
    """
    if size >= n:
        raise ConfigError(f"--validation {size} leaves no training images (the set has {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("validation", n)))
    return order[size:].sort().values, order[:size].sort().values


def held_out(data: RealData, size: int) -> RealData:
    """``data`` with ``size`` training images held out as its test split (``validation_split``)
    and the rest as its training split; the real test set is dropped, so nothing that
    uses the result can see it."""
    train, val = validation_split(int(data.train_y.shape[0]), size)
    return dataclasses.replace(data, train_x=data.train_x[train], train_y=data.train_y[train],
                               test_x=data.train_x[val], test_y=data.train_y[val])
