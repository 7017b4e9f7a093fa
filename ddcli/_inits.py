"""Where each outer iteration's initial weights theta_0 come from (the four init modes)."""

from __future__ import annotations

import abc
import copy
import hashlib

import torch
from torch import nn

from .errors import ConfigError
from .models import init_weights
from .unroll import Params


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (independent of PYTHONHASHSEED and platform)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def init_params(model: nn.Module, scheme: str, seed: int) -> Params:
    """Fresh weights for ``model``'s structure; ``model`` itself is left untouched."""
    scratch = copy.deepcopy(model)
    init_weights(scratch, scheme, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach().clone() for k, v in scratch.named_parameters()}


class InitSource(abc.ABC):
    """Yields the list of theta_0 used at one outer iteration."""

    mode: str = ""
    #: weights stored in bundles and checkpoints when the init is fixed
    fixed_params: Params | None = None

    @abc.abstractmethod
    def sample(self, iteration: int) -> list[Params]:
        """The inits for outer iteration ``iteration`` (0-based)."""

    def describe(self) -> dict:
        return {"mode": self.mode}


class FixedInit(InitSource):
    """One known init from ``seed``, used at every iteration."""

    mode = "fixed"

    def __init__(self, params: Params) -> None:
        self.fixed_params = params

    def sample(self, iteration: int) -> list[Params]:
        return [self.fixed_params]


class RandomInit(InitSource):
    """Fresh inits each iteration: ``n_nets`` are drawn, ``sample_n_nets`` of them used.

    Seeds derive from (seed, iteration, j), so a resumed run draws the same nets.
    """

    mode = "random"

    def __init__(self, model: nn.Module, scheme: str, seed: int, n_nets: int, sample_n_nets: int,
                 device: torch.device) -> None:
        self.model, self.scheme, self.seed = model, scheme, seed
        self.n_nets, self.sample_n_nets, self.device = n_nets, sample_n_nets, device

    def sample(self, iteration: int) -> list[Params]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "pick", iteration))
        picks = torch.randperm(self.n_nets, generator=g)[: self.sample_n_nets].tolist()
        return [
            {k: v.to(self.device) for k, v in init_params(
                self.model, self.scheme, derive_seed(self.seed, "net", iteration, j)).items()}
            for j in sorted(picks)
        ]

    def describe(self) -> dict:
        return {"mode": self.mode, "n_nets": self.n_nets, "sample_n_nets": self.sample_n_nets}


def make_init_source(cfg, model: nn.Module, device: torch.device) -> InitSource:
    """Build the init source named by ``cfg.init.mode``."""
    i = cfg.init
    if i.mode == "fixed":
        params = init_params(model, cfg.model.init_scheme, i.seed)
        return FixedInit({k: v.to(device) for k, v in params.items()})
    if i.mode == "random":
        return RandomInit(model, cfg.model.init_scheme, i.seed, i.n_nets, i.sample_n_nets, device)
    raise ConfigError(f"--init-mode {i.mode} is not supported by this build")
