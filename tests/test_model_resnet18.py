"""`resnet18`: DC's small-image ResNet-18 with instance norm, checked against its parameter
count and a plain functional forward."""

import pytest
import torch
import torch.nn.functional as F

from ddcli.models import create_model


def _norm_params(c):
    return 2 * c


def test_dc_cifar10_parameter_count():
    total = 3 * 64 * 9 + _norm_params(64)  # stem: conv without bias, norm
    cin = 64
    for c in (64, 128, 256, 512):
        for block in range(2):
            total += cin * c * 9 + _norm_params(c) + c * c * 9 + _norm_params(c)
            if cin != c:  # the projection shortcut
                total += cin * c + _norm_params(c)
            cin = c
    total += 512 * 10 + 10
    model = create_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == total == 11_173_962


def _instance_norm(h, w, b):
    mean = h.mean(dim=(2, 3), keepdim=True)
    var = h.var(dim=(2, 3), unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * w[:, None, None] + b[:, None, None]


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_forward_matches_a_plain_functional_resnet18(size, channels):
    model = create_model("resnet18", in_channels=channels, num_classes=4, image_size=size, width=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (0.5 if p.dim() == 1 else 0))
    p = dict(model.named_parameters())
    x = torch.randn(2, channels, size, size, generator=g)
    h = F.relu(_instance_norm(F.conv2d(x, p["stem.0.weight"], padding=1),
                              p["stem.1.weight"], p["stem.1.bias"]))
    for stage in range(4):
        for block in range(2):
            k = f"stages.{stage}.{block}."
            stride = 2 if stage > 0 and block == 0 else 1
            out = F.conv2d(h, p[k + "conv1.weight"], stride=stride, padding=1)
            out = F.relu(_instance_norm(out, p[k + "norm1.weight"], p[k + "norm1.bias"]))
            out = F.conv2d(out, p[k + "conv2.weight"], padding=1)
            out = _instance_norm(out, p[k + "norm2.weight"], p[k + "norm2.bias"])
            short = h
            if k + "shortcut.0.weight" in p:
                short = F.conv2d(h, p[k + "shortcut.0.weight"], stride=stride)
                short = _instance_norm(short, p[k + "shortcut.1.weight"], p[k + "shortcut.1.bias"])
            h = F.relu(out + short)
    assert h.shape[1:] == (16, 4, 4)
    expected = F.linear(h.mean(dim=(2, 3)), p["classifier.weight"], p["classifier.bias"])
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
