"""The four init modes (``--init-mode``), named once, and what each implies.

A mode says where an outer iteration's initial weights theta_0 come from. Configs,
bundles and reports carry it as its string; every module asks the predicates here
rather than comparing those strings itself, so a new mode is added in this file (and
``ddcli.engine.inits`` builds its source).
"""

from __future__ import annotations

from enum import Enum


class InitMode(str, Enum):
    """The modes, equal to their strings (``InitMode.FIXED == "fixed"``)."""

    FIXED = "fixed"  # one init drawn from --seed, at every iteration
    RANDOM = "random"  # fresh inits from the init scheme at every iteration
    PRETRAINED_FIXED = "pretrained-fixed"  # one net of a `dd pretrain` pool
    PRETRAINED_RANDOM = "pretrained-random"  # nets drawn from a pool at every iteration

    def __str__(self) -> str:
        return self.value


INIT_MODES = tuple(m.value for m in InitMode)


def is_pretrained(mode: str) -> bool:
    """theta_0 comes from a pool made by `dd pretrain` (``--pool``)."""
    return mode in (InitMode.PRETRAINED_FIXED, InitMode.PRETRAINED_RANDOM)


def is_fixed(mode: str) -> bool:
    """One init for the whole run, the same net at every iteration (its weights go into
    the bundle): one process trains it, and the set is tuned to it."""
    return mode in (InitMode.FIXED, InitMode.PRETRAINED_FIXED)


def samples_nets(mode: str) -> bool:
    """Several nets per iteration (``--sample-n-nets``), which vmap batches and
    processes share."""
    return mode in (InitMode.RANDOM, InitMode.PRETRAINED_RANDOM)


def is_seeded_fixed(mode: str) -> bool:
    """The one init is drawn from ``--seed`` (not a pool's net): the bundle's stored
    weights are the run's whole init, and fresh nets are its generalisation test."""
    return mode == InitMode.FIXED


def draws_fresh_nets(mode: str) -> bool:
    """New random nets at every iteration, from the model's init scheme (no pool)."""
    return mode == InitMode.RANDOM
