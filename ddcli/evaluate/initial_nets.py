"""Which networks an evaluation starts from, with which seeds: one policy for all.

Used by the engine's periodic evaluation (``--eval-every``), by ``dd eval``'s replay and
train protocols and by pool evaluation, so that the same bundle and seed always mean
the same nets:

- ``STORED``: the init the set was distilled from (fixed and pretrained-fixed runs);
  the number the method optimises.
- ``HELD_OUT``: pool nets that distillation never drew (pretrained modes).
- ``RANDOM``: fresh inits of the model, net j seeded ``derive_seed(seed, "eval", j)``
  with the given weight-init scheme; the generalisation to unseen inits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddcli.core.params import Params, init_params
from ddcli.core.seeds import derive_seed

STORED = "stored init"
RANDOM = "fresh random inits"
HELD_OUT = "held-out pool nets"


@dataclass
class EvalNet:
    """One network to evaluate: its group, its initial weights, its pool index if any."""

    group: str
    params: Params
    pool_index: int | None = None


def fresh_nets(model: nn.Module, n: int, seed: int, scheme: str, *, tag: str = "eval",
               device: torch.device | str = "cpu") -> list[Params]:
    """``n`` fresh inits, net j seeded ``derive_seed(seed, tag, j)``."""
    return [{k: v.to(device) for k, v in init_params(model, scheme, derive_seed(seed, tag, j)).items()}
            for j in range(n)]


def evaluation_nets(
    model: nn.Module, *, n_fresh: int, seed: int, scheme: str,
    stored: Params | None = None, stored_index: int | None = None,
    held_out: list[Params] | None = None, held_out_indices: list[int] | None = None,
    device: torch.device | str = "cpu",
) -> list[EvalNet]:
    """The stored init (if any), then the held-out pool nets (if any), then ``n_fresh``
    fresh random inits, in that order.

    Args:
        model: the network structure (fresh inits take its shapes).
        n_fresh: fresh random inits to add.
        seed: fresh net j is seeded ``derive_seed(seed, "eval", j)``.
        scheme: the weight init of fresh nets.
        stored: the stored init's weights; ``stored_index`` its pool index.
        held_out: held-out pool nets' weights; ``held_out_indices`` their pool indices.
    """
    nets = []
    names = [name for name, _ in model.named_parameters()]  # one order: the same rounding
    if stored is not None:
        nets.append(EvalNet(STORED, {k: stored[k].to(device) for k in names}, stored_index))
    for j, params in enumerate(held_out or []):
        index = held_out_indices[j] if held_out_indices else None
        nets.append(EvalNet(HELD_OUT, {k: params[k].to(device) for k in names}, index))
    nets += [EvalNet(RANDOM, p) for p in fresh_nets(model, n_fresh, seed, scheme, device=device)]
    return nets
