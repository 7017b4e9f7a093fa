"""ConvNet, the default network of the later protocol (DC, DSA, DM, MTT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        if self.input_shape[0] == 1 and torch.compiler.is_compiling():
            # A one-channel 3x3 convolution, as oneDNN runs it inside a compiled graph,
            # cost half of a whole MNIST training step (its weight gradient above all);
            # as a 1x1 convolution over shifted copies it is a plain GEMM.
            first = self.features[0]
            x = conv3x3_as_1x1(x, first.weight, first.bias, first.padding[0])
            return self.classifier(self.features[1:](x))
        return self.classifier(self.features(x))


def conv3x3_as_1x1(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 3x3 kernel, stride 1, written
    as a 1x1 convolution over the 9 shifted copies of the padded input (channels padded
    with zeros to a multiple of 16, the GEMM's preferred width): the same sums, a
    different kernel. ``dd eval --compile`` and ``dd distill --compile`` use it for
    one-channel inputs (docs/performance.md).

    Args:
        x: (B, C, H, W).
        weight: (O, C, 3, 3); bias: (O,) or None.

    Returns:
        (B, O, H + 2 * padding - 2, W + 2 * padding - 2).
    """
    out_ch, in_ch = weight.shape[:2]
    h, w = x.shape[-2] + 2 * padding - 2, x.shape[-1] + 2 * padding - 2
    padded = F.pad(x, (padding,) * 4)
    # channel (3 * i + j) * C + c holds input channel c shifted by (i, j)
    shifted = torch.cat([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], 1)
    k = 9 * in_ch
    extra = -k % 16
    shifted = F.pad(shifted, (0, 0, 0, 0, 0, extra))
    taps = F.pad(weight.permute(0, 2, 3, 1).reshape(out_ch, k), (0, extra))
    return F.conv2d(shifted, taps.reshape(out_ch, k + extra, 1, 1), bias)


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
