"""`vgg11`: DC's VGG11 with instance norm, checked against its parameter count and a plain
functional forward."""

import pytest
import torch
import torch.nn.functional as F

from ddcli.models import create_model


def test_dc_cifar10_parameter_count():
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    total, cin = 0, 3
    for c in widths:
        total += cin * c * 9 + c + 2 * c  # conv weight and bias, norm scale and shift
        cin = c
    total += 512 * 10 + 10
    model = create_model("vgg11", in_channels=3, num_classes=10, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_forward_matches_a_plain_functional_vgg11(size, channels):
    model = create_model("vgg11", in_channels=channels, num_classes=4, image_size=size, width=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # norm affines away from 1 and 0, so they must apply
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (0.5 if p.dim() == 1 else 0))
    params = list(model.parameters())  # conv w, conv b, norm w, norm b per block; then fc
    x = torch.randn(2, channels, size, size, generator=g)
    h, i = x, 0
    for block, pool in enumerate([1, 1, 0, 1, 0, 1, 0, 1]):
        cw, cb, nw, nb = params[i : i + 4]
        i += 4
        h = F.conv2d(h, cw, cb, padding=3 if block == 0 and size == 28 else 1)
        # Instance norm by hand: each sample and channel over its own pixels.
        mean = h.mean(dim=(2, 3), keepdim=True)
        var = h.var(dim=(2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-5) * nw[:, None, None] + nb[:, None, None]
        h = F.relu(h)
        if pool:
            h = F.max_pool2d(h, 2)
    assert h.shape[1:] == (16, 1, 1)
    expected = F.linear(h.flatten(1), params[i], params[i + 1])
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
