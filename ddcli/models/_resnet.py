"""ResNet-18 for small images with instance norm, as DC (Zhao et al. 2021) evaluates it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddcli.errors import ConfigError, ModelError
from ddcli.models._api import check_input, register_model


def _norm(channels: int) -> nn.GroupNorm:
    # Instance norm: one group per channel, no running statistics (no buffers).
    return nn.GroupNorm(channels, channels, affine=True)


class BasicBlock(nn.Module):
    """conv3x3 (stride s) -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, -> ReLU.

    The shortcut is the identity, or a strided conv1x1 -> norm where the shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = _norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), _norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))  # not in place: autograd and vmap need x


class ResNet18(nn.Module):
    """conv3x3 stem, four stages of two basic blocks (widths w, 2w, 4w, 8w; stride 2 from
    the second stage on), 4x4 average pool, one linear layer: the CIFAR-style ResNet-18
    of DC's cross-architecture table (w = 64)."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            _norm(width),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        planes = width
        for stage in range(4):
            out = width * 2**stage
            stride = 1 if stage == 0 else 2
            stages.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out, 1)))
            planes = out
        # 32 px ends at 4x4 (28 px at 4x4 too: 28, 14, 7, 4), which the pool makes 1x1.
        self.stages = nn.Sequential(*stages)  # (B, 8w, 4, 4)
        self.classifier = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "resnet18", self.input_shape)
        out = self.stages(self.stem(x))
        out = F.avg_pool2d(out, 4).flatten(1)  # (B, 8w)
        return self.classifier(out)


@register_model("resnet18", sizes=(28, 32), small={"width": 2})
def _build_resnet18(
    *, in_channels: int, num_classes: int, image_size: int, width: int = 64
) -> nn.Module:
    if not (isinstance(width, int) and width >= 1):
        raise ConfigError(f"resnet18 width must be a positive integer, got {width!r}")
    if image_size not in (28, 32):
        raise ModelError(f"model 'resnet18' needs 28 or 32 px images, got {image_size} px")
    return ResNet18(
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width
    )
