"""`alexnet`: DC's AlexNet, checked against its parameter count and a plain functional forward."""

import pytest
import torch
import torch.nn.functional as F

from ddcli.models import create_model, init_weights


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def test_dc_cifar10_parameter_count():
    # DC's channels 128, 192, 256, 192, 192; a 4x4 map of 192 into the classifier.
    model = create_model("alexnet", in_channels=3, num_classes=10, image_size=32)
    expected = (_conv(3, 128, 5) + _conv(128, 192, 5) + _conv(192, 256, 3) + _conv(256, 192, 3)
                + _conv(192, 192, 3) + 192 * 4 * 4 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 1_872_202


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_forward_matches_a_plain_functional_alexnet(size, channels):
    model = create_model("alexnet", in_channels=channels, num_classes=5, image_size=size, width=4)
    init_weights(model, "kaiming", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # biases too, so that a bias in the wrong place shows
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    b = [p for n, p in model.named_parameters() if n.endswith("bias")]
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    h = F.max_pool2d(F.relu(F.conv2d(x, w[0], b[0], padding=4 if size == 28 else 2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w[1], b[1], padding=2)), 2)
    h = F.relu(F.conv2d(h, w[2], b[2], padding=1))
    h = F.relu(F.conv2d(h, w[3], b[3], padding=1))
    h = F.max_pool2d(F.relu(F.conv2d(h, w[4], b[4], padding=1)), 2)
    assert h.shape[-2:] == (4, 4)
    expected = F.linear(h.flatten(1), w[5], b[5])
    torch.testing.assert_close(model(x), expected)
    assert [tuple(v.shape[:2]) for v in w[:5]] == [(4, channels), (6, 4), (8, 6), (6, 8), (6, 6)]


def test_no_buffers_or_norm_layers():
    model = create_model("alexnet", in_channels=3, num_classes=10, image_size=32, width=4)
    assert list(model.buffers()) == []
