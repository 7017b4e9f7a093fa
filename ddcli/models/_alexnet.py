"""AlexNet as DC (Zhao et al. 2021) evaluates it across architectures, for 28 or 32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

from ddcli.errors import ConfigError, ModelError
from ddcli.models._api import check_input, register_model


class AlexNet(nn.Module):
    """Five convs (5x5, 5x5, 3x3, 3x3, 3x3) with ReLU, max-pool 2 after the 1st, 2nd and
    5th, then one linear layer. No norm layers, as in DC's version.

    Channels are `width` x (1, 1.5, 2, 1.5, 1.5): DC's 128, 192, 256, 192, 192 at the
    default width of 128.
    """

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        c1, c2, c3, c4, c5 = (width, width * 3 // 2, width * 2, width * 3 // 2, width * 3 // 2)
        # 28 px gets 4 px of padding on the 5x5 conv, so it reaches 32 px like CIFAR.
        padding = 4 if image_size == 28 else 2
        size = (32 if image_size == 28 else image_size) // 8
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, S/2, S/2)
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, S/4, S/4)
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c5, S/8, S/8)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, c5 * (S/8)**2)
            nn.Linear(c5 * size * size, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "alexnet", self.input_shape)
        return self.classifier(self.features(x))


@register_model("alexnet", sizes=(28, 32), small={"width": 8})
def _build_alexnet(
    *, in_channels: int, num_classes: int, image_size: int, width: int = 128
) -> nn.Module:
    if not (isinstance(width, int) and width >= 2 and width % 2 == 0):
        raise ConfigError(f"alexnet width must be an even integer >= 2, got {width!r}")
    if image_size != 28 and image_size % 8 != 0:
        raise ModelError(
            f"model 'alexnet' needs 28 px images or a size divisible by 8 (e.g. 32), "
            f"got {image_size} px"
        )
    return AlexNet(
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width
    )
