"""A multi-layer perceptron on flattened images, for any image size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddcli.errors import ConfigError
from ddcli.models._api import check_input, register_model


class MLP(nn.Module):
    """flatten -> Linear -> ReLU for each hidden width -> Linear to `num_classes`."""

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, hidden: Sequence[int]
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        layers: list[nn.Module] = [nn.Flatten()]  # (B, in_channels * image_size**2)
        features = in_channels * image_size * image_size
        for units in hidden:
            layers += [nn.Linear(features, units), nn.ReLU()]
            features = units
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "mlp", self.input_shape)
        return self.layers(x)


@register_model("mlp", sizes=(8, 28, 32), small={"hidden": [16]})
def _build_mlp(
    *, in_channels: int, num_classes: int, image_size: int, hidden: Sequence[int] = (300, 100)
) -> nn.Module:
    valid = isinstance(hidden, (list, tuple)) and all(isinstance(h, int) and h >= 1 for h in hidden)
    if not valid:
        raise ConfigError(f"mlp hidden must be a list of positive integers, got {hidden!r}")
    return MLP(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        hidden=tuple(hidden),
    )
