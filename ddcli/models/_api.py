"""The model registry: `register_model`, `create_model`, `list_models`, `check_functional`."""

from __future__ import annotations

import difflib
import inspect
import operator
from typing import Any, Callable

import torch
from torch import nn

from ddcli.infra.registry import Registry
from ddcli.errors import ConfigError, ModelError, UnknownModelError

ModelBuilder = Callable[..., nn.Module]

_MODELS: Registry[ModelBuilder] = Registry("model")

# The arguments every builder takes; anything else is a model-specific option.
_REQUIRED = ("in_channels", "num_classes", "image_size")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under `name`. Registering a name twice raises `ValueError`.

    A builder takes keyword-only arguments `in_channels`, `num_classes` and
    `image_size`, plus any options of its own with defaults, and returns a plain
    `nn.Module` without buffers that maps `(B, in_channels, image_size, image_size)`
    to `(B, num_classes)` logits.

    Example:
        ```python
        @register_model("linear")
        def _build_linear(*, in_channels, num_classes, image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))
        ```
    """
    return _MODELS.register(name)


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return _MODELS.names()


def create_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """Build a registered model with PyTorch's default initialisation.

    Construction draws from the global RNG, as building any `nn.Module` does; call
    `init_weights` afterwards for a seeded initialisation that doesn't.

    The model gets an attribute `ddcli_spec`: a JSON-friendly dict of the name and
    every constructor argument (options at their defaults included), so that
    `create_model(**model.ddcli_spec)` rebuilds the same architecture.

    Args:
        name: A name from `list_models()`.
        in_channels: Image channels, e.g. 1 for MNIST, 3 for CIFAR-10.
        num_classes: Output units (1 for a binary task trained with BCE).
        image_size: Height and width of the square input images, in pixels.
        **kwargs: Model options, e.g. `width`/`depth` for `convnet`, `hidden` for `mlp`.

    Raises:
        UnknownModelError: `name` is not registered.
        ModelError: The model can't take this input shape.
        ConfigError: A size is not a positive integer, or an option is unknown.

    Example:
        >>> model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    builder = _MODELS.get(name)
    if builder is None:
        raise UnknownModelError(_unknown_model_message(name))
    sizes = {
        "in_channels": _positive_int("in_channels", in_channels),
        "num_classes": _positive_int("num_classes", num_classes),
        "image_size": _positive_int("image_size", image_size),
    }
    signature = inspect.signature(builder)
    try:
        bound = signature.bind(**sizes, **kwargs)
    except TypeError:
        options = [p for p in signature.parameters if p not in _REQUIRED]
        unknown = sorted(set(kwargs) - set(options))
        accepted = ", ".join(options) if options else "none"
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))} (options: {accepted})"
        ) from None
    bound.apply_defaults()
    model = builder(**bound.arguments)
    model.ddcli_spec = {"name": name, **{k: _to_plain(v) for k, v in bound.arguments.items()}}
    return model


def check_functional(model: nn.Module) -> None:
    """Refuse a model whose state is not all in its parameters.

    The distillation unroll runs the model with `torch.func.functional_call` on
    parameters it threads through the inner steps (and `vmap`s over stacks of
    them). Buffers such as BatchNorm running statistics would be mutated as a side
    effect of each step rather than carried through the unroll, so every buffer is
    refused: mutable and constant buffers can't be told apart without running the
    model.

    Raises:
        ModelError: The model has buffers.
    """
    names = [name for name, _ in model.named_buffers()]
    if not names:
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ModelError(
        f"model has buffers ({shown}): functional unrolls can't carry running statistics "
        "or other mutable state; use a norm-free model or one with instance norm "
        "such as 'convnet', or build it with track_running_stats=False"
    )


def check_input(x: torch.Tensor, name: str, shape: tuple[int, int, int]) -> None:
    """Raise `ModelError` unless `x` is `(B, *shape)`; shapes are static, so this is vmap-safe."""
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        expected = "(B, " + ", ".join(map(str, shape)) + ")"
        raise ModelError(f"model {name!r} was built for inputs {expected}, got {tuple(x.shape)}")


def _unknown_model_message(name: str) -> str:
    names = list_models()
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown model {name!r}; choose one of: {', '.join(names)}{hint}"


def _positive_int(label: str, value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{label} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{label} must be a positive integer, got {number}")
    return number


def _to_plain(value: Any) -> Any:
    # Tuples become lists so that the spec survives a JSON round trip unchanged.
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value
