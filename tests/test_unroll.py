"""The inner loop and the meta-gradient: exact against independent computations."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddcli._inits import init_params
from ddcli.models import create_model
from ddcli.unroll import meta_gradient, softplus_inverse, unroll


class Tiny(nn.Module):
    """A 2-layer net on 4x4 images: small enough for finite differences in float64."""

    def __init__(self, c=1, hw=4, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(c * hw * hw, 5)
        self.fc2 = nn.Linear(5, classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def _problem(dtype=torch.float64, steps=2, epochs=2, classes=3, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = Tiny(classes=classes).to(dtype)
    params = {n: (torch.randn(p.shape, generator=g, dtype=dtype) * 0.5) for n, p in model.named_parameters()}
    n = classes * k
    images = torch.randn(steps, n, 1, 4, 4, generator=g, dtype=dtype)
    labels = torch.arange(classes).repeat_interleave(k).expand(steps, n).contiguous()
    raw = softplus_inverse(torch.full((steps * epochs,), 0.3, dtype=dtype)) + 0.1 * torch.randn(
        steps * epochs, generator=g, dtype=dtype)
    real_x = torch.randn(7, 1, 4, 4, generator=g, dtype=dtype)
    real_y = torch.randint(0, classes, (7,), generator=g)
    return model, params, images, labels, raw, real_x, real_y


def _loss_of(model, params, images, labels, raw, real_x, real_y):
    final, _ = unroll(model, params, images, labels, F.softplus(raw), create_graph=False)
    with torch.no_grad():
        return F.cross_entropy(torch.func.functional_call(model, final, (real_x,)), real_y).item()


def test_softplus_inverse_roundtrip():
    assert F.softplus(softplus_inverse(0.02)).item() == pytest.approx(0.02, rel=1e-6)


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_meta_gradient_matches_finite_differences(mode):
    model, params, images, labels, raw, rx, ry = _problem()
    loss, g_img, g_lr = meta_gradient(model, params, images, labels, raw, rx, ry, mode=mode)
    assert loss.item() == pytest.approx(_loss_of(model, params, images, labels, raw, rx, ry), abs=1e-12)
    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    # Central differences along random coordinates of the images, and every raw rate.
    for flat_idx in torch.randint(0, images.numel(), (8,), generator=gen).tolist():
        e = torch.zeros_like(images).view(-1)
        e[flat_idx] = eps
        e = e.view_as(images)
        fd = (_loss_of(model, params, images + e, labels, raw, rx, ry)
              - _loss_of(model, params, images - e, labels, raw, rx, ry)) / (2 * eps)
        assert g_img.view(-1)[flat_idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
    for t in range(raw.numel()):
        e = torch.zeros_like(raw)
        e[t] = eps
        fd = (_loss_of(model, params, images, labels, raw + e, rx, ry)
              - _loss_of(model, params, images, labels, raw - e, rx, ry)) / (2 * eps)
        assert g_lr[t].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_memory_modes_agree_in_float64():
    model, params, images, labels, raw, rx, ry = _problem(steps=3, epochs=3, k=2)
    ref = meta_gradient(model, params, images, labels, raw, rx, ry, mode="full")
    for mode in ("stepwise", "recompute"):
        got = meta_gradient(model, params, images, labels, raw, rx, ry, mode=mode)
        for a, b in zip(ref, got):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unroll_equals_plain_sgd_loop():
    """The functional unroll against torch.optim.SGD stepping a stateful module copy."""
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    params = init_params(model, "xavier", seed=3)
    steps, epochs = 3, 2
    images = torch.randn(steps, 10, 1, 28, 28)
    labels = torch.arange(10).expand(steps, 10)
    lrs = torch.tensor([0.05, 0.02, 0.03, 0.01, 0.04, 0.02])
    final, trace = unroll(model, params, images, labels, lrs, create_graph=False, trace=True)
    assert len(trace) == steps * epochs + 1

    net = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(params[n])
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for t in range(steps * epochs):
        for group in opt.param_groups:
            group["lr"] = lrs[t].item()
        opt.zero_grad()
        F.cross_entropy(net(images[t % steps]), labels[t % steps]).backward()
        opt.step()
    for n, p in net.named_parameters():
        torch.testing.assert_close(final[n], p, rtol=1e-5, atol=1e-6)


def test_meta_gradient_leaves_init_and_model_untouched():
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    before_model = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = init_params(model, "xavier", seed=0)
    before = {n: p.clone() for n, p in params.items()}
    images = torch.randn(2, 10, 1, 28, 28)
    labels = torch.arange(10).expand(2, 10)
    raw = softplus_inverse(0.02).repeat(4)
    meta_gradient(model, params, images, labels, raw, torch.randn(16, 1, 28, 28),
                  torch.randint(0, 10, (16,)))
    for n in params:
        assert torch.equal(params[n], before[n])
        assert torch.equal(dict(model.named_parameters())[n], before_model[n])
