"""VGG11 with instance norm, as DC (Zhao et al. 2021) evaluates it, for 28 or 32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

from ddcli.errors import ConfigError, ModelError
from ddcli.models._api import check_input, register_model

# VGG11's convs in units of `width` (64: 64, 128, 256, ...); "M" is a 2x2 max-pool.
_VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


class VGG11(nn.Module):
    """Eight conv3x3 -> instance norm -> ReLU blocks with five max-pools, then one linear
    layer on the 1x1 map.

    Instance norm is GroupNorm with one group per channel (DC's "instancenorm"): no
    running statistics, so the model has no buffers and works under `vmap`.
    """

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        layers: list[nn.Module] = []
        channels = in_channels
        for i, units in enumerate(_VGG11):
            if units == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = units * width
            # 28 px gets 3 px of padding on the first conv, so it is treated as 32 px.
            padding = 3 if i == 0 and image_size == 28 else 1
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=padding),
                nn.GroupNorm(out, out, affine=True),
                nn.ReLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)  # (B, 8 * width, 1, 1)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 8 * width)
            nn.Linear(channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "vgg11", self.input_shape)
        return self.classifier(self.features(x))


@register_model("vgg11", sizes=(28, 32), small={"width": 2})
def _build_vgg11(
    *, in_channels: int, num_classes: int, image_size: int, width: int = 64
) -> nn.Module:
    if not (isinstance(width, int) and width >= 1):
        raise ConfigError(f"vgg11 width must be a positive integer, got {width!r}")
    if image_size not in (28, 32):
        # Five pools must leave a 1x1 map for the 8 * width features of the classifier.
        raise ModelError(f"model 'vgg11' needs 28 or 32 px images, got {image_size} px")
    return VGG11(
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width
    )
