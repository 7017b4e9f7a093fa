"""The methods past the paper, checked exactly: soft labels, truncated windows, the
set-structured inner loop, SGD with momentum inside the unroll, DSA augmentation.

Every meta-gradient is held to float64 central differences of the replayed loss, and
the special cases to the computations they must reduce to.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddcli.core.augment import DSA, FAMILIES
from ddcli.core.meta_gradient import outer_loss
from ddcli.core.rates import lrs_from_raw, raw_from_lrs
from ddcli.core.schedules import CyclicSchedule, PoolSchedule
from ddcli.core.steps import GD, SGD, StepFn
from ddcli.core.unroll import adjoint_of, differentiate_unroll, unroll

from tests._toy import Tiny as _TinyNet

D = torch.float64


def Tiny(classes=3):
    """The shared tiny net on 2-channel 4 x 4 images."""
    return _TinyNet(classes, c=2)


def _problem(steps=2, epochs=2, classes=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = Tiny(classes).to(D)
    params = {n: torch.randn(p.shape, generator=g, dtype=D) * 0.5 for n, p in model.named_parameters()}
    n = classes * k
    images = torch.randn(steps, n, 2, 4, 4, generator=g, dtype=D)
    hard = torch.arange(classes).repeat_interleave(k).expand(steps, n).contiguous()
    # Soft labels away from one-hot, so every entry matters; non-negative, not normalised.
    soft = (F.one_hot(hard, classes).to(D) + 0.3 * torch.rand(steps, n, classes, generator=g,
                                                              dtype=D))
    raw = raw_from_lrs(torch.full((steps * epochs,), 0.3, dtype=D)) + 0.1 * torch.randn(
        steps * epochs, generator=g, dtype=D)
    x = torch.randn(7, 2, 4, 4, generator=g, dtype=D)
    y = torch.randint(0, classes, (7,), generator=g)
    return model, params, images, hard, soft, raw, x, y


def _replayed_loss(step, model, params, learned, labels, schedule, window, x, y, base=None):
    """The outer loss after replaying the schedule with ``learned``; with a window
    (t0, N), steps before t0 use ``base`` (the unperturbed set): they are constants of
    the meta-gradient."""
    t0, stop = window or (0, schedule.length)

    def run(lrn, p, state, begin, end):
        return unroll(step, p, lrn["images"], lrn.get("soft_labels", labels),
                      lrs_from_raw(lrn["raw_lrs"]), create_graph=False, schedule=schedule,
                      state=state, start=begin, stop=end)

    prefix = run(base or learned, params, None, 0, t0)
    final = run(learned, prefix.params, prefix.state, t0, stop).params
    with torch.no_grad():
        return outer_loss(model, final, x, y).item()


def _check_against_finite_differences(step, model, params, learned, labels, schedule, x, y, *,
                                      window=None, mode="full", coords=6):
    outer = adjoint_of(lambda p: outer_loss(model, p, x, y))
    got = differentiate_unroll(step, outer, params, learned, labels=labels, schedule=schedule,
                               mode=mode, window=window)
    loss = _replayed_loss(step, model, params, learned, labels, schedule, window, x, y)
    assert got.loss.item() == pytest.approx(loss, abs=1e-12)
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for name, tensor in learned.items():
        for i in torch.randint(0, tensor.numel(), (coords,), generator=gen).tolist():
            e = torch.zeros_like(tensor).view(-1)
            e[i] = eps
            e = e.view_as(tensor)
            hi = _replayed_loss(step, model, params, {**learned, name: tensor + e}, labels,
                                schedule, window, x, y, base=learned)
            lo = _replayed_loss(step, model, params, {**learned, name: tensor - e}, labels,
                                schedule, window, x, y, base=learned)
            assert got.grads[name].view(-1)[i].item() == pytest.approx(
                (hi - lo) / (2 * eps), rel=1e-5, abs=1e-9), (name, i, mode)
    return got


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_soft_label_meta_gradient_matches_finite_differences(mode):
    model, params, images, hard, soft, raw, x, y = _problem()
    learned = {"images": images, "raw_lrs": raw, "soft_labels": soft}
    _check_against_finite_differences(StepFn(model), model, params, learned, hard,
                                      CyclicSchedule(2, 4), x, y, mode=mode)


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_truncated_window_meta_gradient_matches_finite_differences(mode):
    """Steps before the window run without a graph: theta_t0 is a constant there, so
    the differences replay the prefix with the unperturbed set."""
    model, params, images, hard, soft, raw, x, y = _problem(epochs=3)
    schedule = CyclicSchedule(2, 6)
    learned = {"images": images, "raw_lrs": raw, "soft_labels": soft}
    window = (2, 5)  # steps 2, 3, 4; the outer loss after step 5
    outer = adjoint_of(lambda p: outer_loss(model, p, x, y))
    got = differentiate_unroll(StepFn(model), outer, params, learned, labels=hard,
                               schedule=schedule, mode=mode, window=window)
    # theta_2 from the unperturbed set, then the window differentiated by differences.
    start = unroll(model, params, images, soft, lrs_from_raw(raw), create_graph=False,
                   schedule=schedule, stop=2).params

    def loss(lrn):
        final = unroll(model, start, lrn["images"], lrn["soft_labels"], lrs_from_raw(lrn["raw_lrs"]),
                       create_graph=False, schedule=schedule, start=2, stop=5).params
        with torch.no_grad():
            return outer_loss(model, final, x, y).item()

    assert got.loss.item() == pytest.approx(loss(learned), abs=1e-12)
    eps, gen = 1e-6, torch.Generator().manual_seed(2)
    for name, tensor in learned.items():
        for i in torch.randint(0, tensor.numel(), (6,), generator=gen).tolist():
            e = torch.zeros_like(tensor).view(-1)
            e[i] = eps
            e = e.view_as(tensor)
            fd = (loss({**learned, name: tensor + e}) - loss({**learned, name: tensor - e})) / (2 * eps)
            assert got.grads[name].view(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # Rates outside the window get no gradient; steps 0 and 1 and step 5 are outside.
    assert got.grads["raw_lrs"][[0, 1, 5]].abs().max() == 0


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_window_of_all_steps_is_the_full_unroll_exactly(mode):
    model, params, images, hard, soft, raw, x, y = _problem()
    learned = {"images": images, "raw_lrs": raw, "soft_labels": soft}
    outer = adjoint_of(lambda p: outer_loss(model, p, x, y))
    full = differentiate_unroll(StepFn(model), outer, params, learned, labels=hard, mode=mode)
    window = differentiate_unroll(StepFn(model), outer, params, learned, labels=hard, mode=mode,
                                  window=(0, 4))
    assert torch.equal(full.loss, window.loss)
    for name in learned:
        assert torch.equal(full.grads[name], window.grads[name])


@pytest.mark.parametrize("mode", ["full", "recompute"])
def test_sgd_momentum_pool_schedule_meta_gradient_matches_finite_differences(mode):
    """The set-structured loop (minibatches of the pool) through SGD with momentum and
    weight decay: the adjoint carries the momentum buffers too."""
    model, params, images, hard, soft, raw, x, y = _problem(epochs=3)
    schedule = PoolSchedule(pool_size=12, batch=4, length=6, seed=5)
    step = StepFn(model, SGD(momentum=0.9, weight_decay=5e-3))
    learned = {"images": images, "raw_lrs": raw, "soft_labels": soft}
    _check_against_finite_differences(step, model, params, learned, hard, schedule, x, y,
                                      mode=mode, window=(1, 6))


@pytest.mark.parametrize("family", FAMILIES)
def test_dsa_meta_gradient_matches_finite_differences(family):
    """Each DSA op family inside the unroll, re-applied from its seed in recompute mode."""
    model, params, images, hard, soft, raw, x, y = _problem()
    dsa = DSA(families=(family,))
    schedule = CyclicSchedule(2, 4, augment=lambda xs, t: dsa(xs, 100 + t))
    learned = {"images": images, "raw_lrs": raw}
    for mode in ("full", "recompute"):
        _check_against_finite_differences(StepFn(model), model, params, learned, hard, schedule,
                                          x, y, mode=mode, coords=4)


def test_pool_schedule_draws_every_image_once_per_pass_and_is_a_function_of_the_seed():
    a, b = PoolSchedule(10, 3, 9, seed=1), PoolSchedule(10, 3, 9, seed=1)
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, PoolSchedule(10, 3, 9, seed=2).indices)
    first_pass = a.indices[:3].flatten()  # 3 steps of 3 from a pool of 10 (1 left over)
    assert first_pass.unique().numel() == 9
    assert PoolSchedule(4, 10, 2, seed=0).indices.shape == (2, 4)  # K >= M: the whole pool


def test_sgd_rule_is_torch_sgd_bit_for_bit():
    torch.manual_seed(0)
    model = Tiny().float()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    step = StepFn(model, SGD(momentum=0.9, weight_decay=5e-4))
    state = step.init(params)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for t in range(4):
        x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
        params, state = step(params, state, x, y, 0.05, create_graph=False)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for k, p in model.named_parameters():
        assert torch.equal(params[k], p.detach()), k


def test_adam_rule_matches_torch_adam():
    torch.manual_seed(0)
    model = Tiny().float()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    from ddcli.core.steps import Adam

    step = StepFn(model, Adam(weight_decay=1e-3))
    state = step.init(params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(4):
        x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
        params, state, _ = step.with_loss(params, state, x, y, 1e-2)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for k, p in model.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=0, atol=1e-7)


def test_soft_one_hot_labels_step_like_hard_labels():
    model, params, images, hard, _, raw, x, y = _problem()
    one_hot = F.one_hot(hard, 3).to(D)
    a = unroll(model, params, images, hard, lrs_from_raw(raw), create_graph=False).params
    b = unroll(model, params, images, one_hot, lrs_from_raw(raw), create_graph=False).params
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-13)


def test_dsa_is_seeded_differentiable_and_shape_preserving():
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    for family in FAMILIES:
        dsa = DSA(families=(family,))
        a, b = dsa(x, 7), dsa(x, 7)
        assert torch.equal(a, b) and a.shape == x.shape
        a.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        x.grad = None
    stacked = torch.randn(2, 5, 3, 8, 8)
    assert DSA()(stacked, 3).shape == stacked.shape
    rotate = DSA(families=("rotate",))
    assert not torch.equal(rotate(x, 1), rotate(x, 2))  # the seed is what varies them
