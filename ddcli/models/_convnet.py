"""ConvNet, the default network of the later protocol (DC, DSA, DM, MTT)."""

from __future__ import annotations

import torch
from torch import nn

from ddcli.errors import ConfigError, ModelError
from ddcli.models._api import check_input, register_model


class ConvNet(nn.Module):
    """`depth` blocks of conv3x3 -> instance norm -> ReLU -> avg-pool 2, then one linear layer.

    Instance norm is GroupNorm with one group per channel: it normalises each sample
    on its own and keeps no running statistics, so the model has no buffers and
    works under `functional_call` and `vmap`.
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, image_size: int, width: int, depth: int
    ) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        # 28 px input gets 3 px of padding on the first conv, so it is treated as 32 px.
        size = 32 if image_size == 28 else image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(depth):
            padding = 3 if block == 0 and image_size == 28 else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=padding),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            channels = width
            size //= 2
        self.features = nn.Sequential(*layers)  # (B, width, size, size)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, width * size * size)
            nn.Linear(width * size * size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "convnet", self.input_shape)
        return self.classifier(self.features(x))


@register_model("convnet", sizes=(28, 32), small={"width": 8, "depth": 2})
def _build_convnet(
    *, in_channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3
) -> nn.Module:
    if not (isinstance(width, int) and width >= 1 and isinstance(depth, int) and depth >= 1):
        raise ConfigError(
            f"convnet width and depth must be positive integers, got {width}, {depth}"
        )
    size = 32 if image_size == 28 else image_size
    if size % (2**depth) != 0:
        raise ModelError(
            f"model 'convnet' with depth {depth} needs 28 px images or a size divisible by "
            f"{2**depth} (e.g. 32), got {image_size} px"
        )
    return ConvNet(
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        width=width,
        depth=depth,
    )
