"""The model registry: `register_model`, `create_model`, `list_models`, `model_info`,
`check_functional`."""

from __future__ import annotations

import difflib
import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ddcli.infra.registry import Registry
from ddcli.errors import ConfigError, ModelError, UnknownModelError
from ddcli.models import _user

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What `register_model` was told about a model besides its builder.

    Attributes:
        name: The registry name.
        sizes: Image sizes (pixels) the model takes; the smoke tests over
            `list_models()` build it at each.
        small: Options that make a small, fast variant (e.g. `{"width": 4}`), for the
            smoke tests and toy runs; empty when the defaults are small already.
    """

    name: str
    sizes: tuple[int, ...]
    small: dict[str, Any] = field(default_factory=dict)


_MODELS: Registry[ModelBuilder] = Registry("model")
_INFO: dict[str, ModelInfo] = {}

# The arguments every builder takes; anything else is a model-specific option.
_REQUIRED = ("in_channels", "num_classes", "image_size")


def register_model(
    name: str, *, sizes: tuple[int, ...] = (28, 32), small: dict[str, Any] | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under `name`. Registering a name twice raises `ValueError`.

    A builder takes keyword-only arguments `in_channels`, `num_classes` and
    `image_size`, plus any options of its own with defaults, and returns a plain
    `nn.Module` without buffers that maps `(B, in_channels, image_size, image_size)`
    to `(B, num_classes)` logits. Names with a `:` are kept for your own models
    (`FILE.py:FACTORY`).

    Args:
        name: Lower-case name, as typed after `--model`.
        sizes: Image sizes the model takes (`ModelInfo.sizes`).
        small: Options of a small, fast variant (`ModelInfo.small`).

    Example:
        ```python
        @register_model("linear", sizes=(8, 28, 32))
        def _build_linear(*, in_channels, num_classes, image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))
        ```
    """
    if ":" in name:
        raise ValueError(f"model names don't contain ':' (kept for FILE.py:FACTORY): {name!r}")
    register = _MODELS.register(name)

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        register(builder)
        _INFO[name] = ModelInfo(name, tuple(sizes), dict(small or {}))
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """What the registry knows about model `name` besides its builder.

    Raises:
        UnknownModelError: `name` is not registered.
    """
    if name not in _INFO:
        raise UnknownModelError(_unknown_model_message(name))
    return _INFO[name]


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return _MODELS.names()


def create_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """Build a registered model, or your own, with PyTorch's default initialisation.

    Construction draws from the global RNG, as building any `nn.Module` does; call
    `init_weights` afterwards for a seeded initialisation that doesn't.

    The model gets an attribute `ddcli_spec`: a JSON-friendly dict of the name and
    every constructor argument (options at their defaults included), so that
    `create_model(**model.ddcli_spec)` rebuilds the same architecture.

    Your own model is `FILE.py:FACTORY` or `MODULE:FACTORY`: the factory is called
    with the same keyword arguments (sizes and `kwargs`) and must return a buffer-free
    `nn.Module` (`check_functional`). Its spec names a file by its absolute path.

    Args:
        name: A name from `list_models()`, or `FILE.py:FACTORY` / `MODULE:FACTORY`.
        in_channels: Image channels, e.g. 1 for MNIST, 3 for CIFAR-10.
        num_classes: Output units (1 for a binary task trained with BCE).
        image_size: Height and width of the square input images, in pixels.
        **kwargs: Model options, e.g. `width`/`depth` for `convnet`, `hidden` for `mlp`.

    Raises:
        UnknownModelError: `name` is not registered, or names a missing module or factory.
        ModelError: The model can't take this input shape; your model's file is missing,
            fails to import, or its factory fails or returns no `nn.Module`.
        ConfigError: A size is not a positive integer, or an option is unknown.

    Example:
        >>> model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    sizes = {
        "in_channels": _positive_int("in_channels", in_channels),
        "num_classes": _positive_int("num_classes", num_classes),
        "image_size": _positive_int("image_size", image_size),
    }
    if _user.is_user_model(name):
        return _create_user_model(name, sizes, kwargs)
    builder = _MODELS.get(name)
    if builder is None:
        raise UnknownModelError(_unknown_model_message(name))
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


def _create_user_model(name: str, sizes: dict[str, int], kwargs: dict[str, Any]) -> nn.Module:
    factory = _user.load_factory(name)
    try:
        model = factory(**sizes, **kwargs)
    except (ConfigError, ModelError, UnknownModelError):
        raise
    except Exception as exc:
        raise ModelError(f"model {name!r} failed to build with {_kwargs_text(sizes, kwargs)}: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    model.ddcli_spec = {"name": _user.canonical_name(name), **sizes,
                        **{k: _to_plain(v) for k, v in kwargs.items()}}
    return model


def _kwargs_text(sizes: dict[str, int], kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in {**sizes, **kwargs}.items())


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
