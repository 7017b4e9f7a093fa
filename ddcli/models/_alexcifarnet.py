"""AlexCifarNet (Wang et al. 2018's CIFAR-10 network), for 32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

from ddcli.errors import ModelError
from ddcli.models._api import check_input, register_model


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=4, alpha=0.001 / 9.0, beta=0.75, k=1.0)


class AlexCifarNet(nn.Module):
    """Two conv5x5->64 blocks with max-pool and local response norm, then fc 4096->384->192->C."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5, padding=2),
            # Pool before ReLU: the two commute (values and gradients, to the bit), and
            # the ReLU then runs on a quarter of the activations. Parameter names as
            # for conv -> ReLU -> pool. (The second block's LRN sits between them.)
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (B, 64, 16, 16)
            nn.ReLU(),
            _lrn(),
            nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (B, 64, 8, 8)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 4096)
            nn.Linear(64 * 8 * 8, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "alexcifarnet", self.input_shape)
        return self.classifier(self.features(x))


@register_model("alexcifarnet", sizes=(32,))
def _build_alexcifarnet(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if image_size != 32:
        raise ModelError(f"model 'alexcifarnet' needs 32 px images, got {image_size} px")
    return AlexCifarNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
