"""Seeded weight initialisation that never touches the global RNG."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn import init

from ddcli.errors import ConfigError

MODEL_INIT_SCHEMES = (
    "xavier",
    "xavier-uniform",
    "kaiming",
    "kaiming-out",
    "orthogonal",
    "normal",
    "default",
)

# Std of the "normal" scheme. The usual small-normal choice (DCGAN); N(0, 1), the
# other common reading of "normal", makes these networks' logits explode.
NORMAL_STD = 0.02

# Layers whose 1-D weight is a scale: set to 1 (and bias to 0) by every scheme but "default".
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)

_Draw = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

_WEIGHT_DRAWS: dict[str, _Draw] = {
    "xavier": lambda t, g: init.xavier_normal_(t, gain=1.0, generator=g),
    "xavier-uniform": lambda t, g: init.xavier_uniform_(t, gain=1.0, generator=g),
    "kaiming": lambda t, g: init.kaiming_normal_(
        t, mode="fan_in", nonlinearity="relu", generator=g
    ),
    "kaiming-out": lambda t, g: init.kaiming_normal_(
        t, mode="fan_out", nonlinearity="relu", generator=g
    ),
    "orthogonal": lambda t, g: init.orthogonal_(t, gain=1.0, generator=g),
    "normal": lambda t, g: init.normal_(t, mean=0.0, std=NORMAL_STD, generator=g),
}


def init_weights(
    model: nn.Module, scheme: str = "xavier", *, generator: torch.Generator
) -> nn.Module:
    """Initialise `model`'s parameters in place from `generator`, and return the model.

    The same generator state always gives the same weights, whatever the model's
    device or dtype: values are drawn in float32 on the generator's device and then
    copied into each parameter. The global RNG is left as it was.

    Schemes (`MODEL_INIT_SCHEMES`), applied to every weight with 2 or more dims
    (linear and conv weights; conv fans include the kernel area):

    - `"xavier"` (the default, as in Wang et al. 2018): xavier-normal, gain 1,
      std `sqrt(2 / (fan_in + fan_out))`.
    - `"xavier-uniform"`: xavier-uniform, gain 1.
    - `"kaiming"`: kaiming-normal, fan-in, ReLU gain.
    - `"kaiming-out"`: kaiming-normal, fan-out, ReLU gain.
    - `"orthogonal"`: orthogonal, gain 1 (conv weights flattened to 2-D).
    - `"normal"`: N(0, 0.02²) (`NORMAL_STD`).
    - `"default"`: each module's own `reset_parameters()` (PyTorch's defaults, which
      may change between PyTorch versions), run on the CPU RNG seeded with a seed
      drawn from `generator`, inside `torch.random.fork_rng`.

    With every scheme but `"default"`, norm layers (GroupNorm, LayerNorm, BatchNorm,
    ...) get weight 1 and bias 0, and every other parameter with fewer than 2 dims
    (biases) is set to 0.

    Args:
        model: The module to initialise in place.
        scheme: One of `MODEL_INIT_SCHEMES`.
        generator: The source of randomness, e.g. `torch.Generator().manual_seed(0)`.

    Raises:
        ConfigError: `scheme` is unknown.

    Example:
        >>> from ddcli.models import create_model
        >>> net = create_model("mlp", in_channels=1, num_classes=10, image_size=28)
        >>> net = init_weights(net, "xavier", generator=torch.Generator().manual_seed(0))
        >>> bool((net.layers[1].bias == 0).all())
        True
    """
    if scheme not in MODEL_INIT_SCHEMES:
        raise ConfigError(
            f"unknown init scheme {scheme!r}; choose one of: {', '.join(MODEL_INIT_SCHEMES)}"
        )
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"init_weights needs a torch.Generator, got {type(generator).__name__}")
    if scheme == "default":
        _reset_parameters(model, generator)
        return model
    draw = _WEIGHT_DRAWS[scheme]
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, _NORM_LAYERS)
            for name, param in module.named_parameters(recurse=False):
                if param.dim() >= 2 and not is_norm:
                    value = torch.empty(param.shape, dtype=torch.float32, device=generator.device)
                    param.copy_(draw(value, generator))
                elif is_norm and name == "weight":
                    param.fill_(1.0)
                else:
                    param.zero_()
    return model


def _reset_parameters(model: nn.Module, generator: torch.Generator) -> None:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    plain = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    # Other models are reset on a float32 CPU copy, so only the CPU RNG is ever seeded
    # (and restored by fork_rng), and the result doesn't depend on device or dtype.
    target = model if plain else copy.deepcopy(model).to("cpu", torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        for module in target.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    if target is not model:
        fresh = dict(target.named_parameters())
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(fresh[name])
