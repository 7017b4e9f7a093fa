"""LeNet-5 (Wang et al. 2018's MNIST network), for 28 or 32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

from ddcli.errors import ModelError
from ddcli.models._api import check_input, register_model


class LeNet(nn.Module):
    """conv5x5->6, ReLU, pool, conv5x5->16, ReLU, pool, fc 400->120->84->C, ReLU between."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        # 28 px is padded to 32 so that both sizes reach 16 x 5 x 5 = 400 features.
        padding = 2 if image_size == 28 else 0
        # Each pool comes before its ReLU: max-pooling and ReLU commute (values and
        # gradients, to the bit, ties included), and the ReLU then runs on a quarter of
        # the activations. The parameter names are those of conv -> ReLU -> pool.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.ReLU(),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.MaxPool2d(2),  # (B, 16, 5, 5)
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 400)
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "lenet", self.input_shape)
        return self.classifier(self.features(x))


@register_model("lenet", sizes=(28, 32))
def _build_lenet(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if image_size not in (28, 32):
        raise ModelError(f"model 'lenet' needs 28 or 32 px images, got {image_size} px")
    return LeNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
