"""RaT-BPTT's published recipe, piece by piece: meta-gradient clipping to a moving
average of its norm, class-balanced inner minibatches, and Adam inside the unroll.

Clipping is held to an independent computation in plain Python floats, the draws to
their definition, the Adam step map to ``torch.optim.Adam`` and its meta-gradient to
float64 central differences; each is resumed bit for bit through ``distill``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from ddcli import distill, resume
from ddcli.core.inner import InnerLoop
from ddcli.core.rates import lrs_from_raw, raw_from_lrs
from ddcli.core.schedules import BalancedSchedule
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import Adam, StepFn, _sqrt
from ddcli.core.unroll import unroll
from ddcli.engine.clipping import clip_to_average_, initial_average
from ddcli.errors import ConfigError

from tests._toy import distill_until_ctrl_c, toy_config, toy_data
from tests.test_methods import D, Tiny, _check_against_finite_differences, _problem


# --- clipping ------------------------------------------------------------------------------

def test_clipping_matches_an_independent_computation():
    """k = 2, d = 0.9 over a run of norms with spikes, against the rule written out in
    Python floats: first iteration unclipped, the raw norm into the average, then the
    cap k x average (this iteration's norm included)."""
    g = torch.Generator().manual_seed(0)
    scales = [1.0, 1.2, 0.8, 5.0, 1.0, 40.0, 0.5]  # 5.0 and 40.0 are spikes
    k, d = 2.0, 0.9
    average, ref_average = initial_average(), None
    clipped_any = False
    for s in scales:
        grads = [s * torch.randn(3, 4, generator=g, dtype=D), s * torch.randn(5, generator=g, dtype=D)]
        raw = [t.clone() for t in grads]
        norm, average = clip_to_average_(grads, average, factor=k, decay=d)
        # The reference: plain floats, the norm as a sum of squares.
        ref_norm = math.sqrt(sum(float((t**2).sum()) for t in raw))
        ref_average = ref_norm if ref_average is None else d * ref_average + (1 - d) * ref_norm
        scale = min(1.0, k * ref_average / (ref_norm + 1e-6))
        assert norm.item() == pytest.approx(ref_norm, rel=1e-12)
        assert average.item() == pytest.approx(ref_average, rel=1e-12)
        for t, r in zip(grads, raw):
            torch.testing.assert_close(t, r * scale, rtol=1e-12, atol=0)
            if scale == 1.0:
                assert torch.equal(t, r)  # unclipped is untouched, bit for bit
        clipped_any |= scale < 1.0
        if scale < 1.0:  # the clipped norm is the cap
            new_norm = math.sqrt(sum(float((t**2).sum()) for t in grads))
            assert new_norm == pytest.approx(k * ref_average, rel=1e-6)
    assert clipped_any


def test_the_first_iteration_is_not_clipped_and_a_small_factor_always_clips():
    grads = [torch.full((4,), 3.0)]
    _, average = clip_to_average_(grads, initial_average(), factor=2.0, decay=0.9)
    assert torch.equal(grads[0], torch.full((4,), 3.0)) and average.item() == 6.0
    _, average = clip_to_average_(grads, initial_average(), factor=0.5, decay=0.9)
    assert grads[0].norm().item() == pytest.approx(3.0, rel=1e-6)  # 6 -> 0.5 x 6


# --- class-balanced minibatches --------------------------------------------------------------

def test_balanced_draws_are_class_balanced_fresh_each_step_and_seeded():
    slot_classes = torch.arange(2 * 12) % 12 // 4  # 2 steps of 3 classes x 4, class-major
    a = BalancedSchedule(slot_classes, 3, 50, seed=7)
    assert a.indices.shape == (50, 9)
    for row in a.indices:
        classes = slot_classes[row]
        assert torch.equal(classes, torch.arange(3).repeat_interleave(3))  # class-major, 3 each
        assert row.unique().numel() == 9  # without replacement within a step
    # Each class's 8 slots are all drawn over the steps, not always the same 3.
    assert a.indices.unique().numel() == 24
    assert torch.equal(a.indices, BalancedSchedule(slot_classes, 3, 50, seed=7).indices)
    assert not torch.equal(a.indices, BalancedSchedule(slot_classes, 3, 50, seed=8).indices)
    images, labels = torch.randn(2, 12, 1, 2, 2), torch.arange(12).expand(2, 12) % 12 // 4
    x, y = a.inputs(5, images, labels)
    assert torch.equal(x, images.flatten(0, 1)[a.indices[5]]) and torch.equal(y, labels.flatten()[a.indices[5]])
    with pytest.raises(ValueError):
        BalancedSchedule(slot_classes, 9, 5, seed=0)  # 9 > the 8 of each class


def test_inner_loop_draws_by_class_and_the_config_checks_it():
    cfg = toy_config(synth={"steps": 2, "images_per_class": 2, "inner_batch_per_class": 3})
    inner = InnerLoop.from_config(cfg, 3 * 2)
    schedule = inner.schedule(11)
    assert isinstance(schedule, BalancedSchedule) and inner.batch_size == 9
    hard = torch.arange(3).repeat_interleave(2).expand(2, 6)  # the engine's slot labels
    for t in range(cfg.total_steps):
        _, y = schedule.inputs(t, torch.zeros(2, 6, 1, 1, 1), hard)
        assert torch.equal(y.bincount(minlength=3), torch.tensor([3, 3, 3]))
    for bad in ({"inner_batch_per_class": 5},  # more than the 4 images of a class
                {"inner_batch_per_class": 1, "inner_batch": 3},
                {"inner_batch_per_class": 0}):
        with pytest.raises(ConfigError):
            toy_config(synth={"steps": 2, "images_per_class": 2, **bad}).validate()


# --- Adam in the step map ------------------------------------------------------------------

def test_adam_unroll_with_learned_rates_is_torch_adam():
    """The distillation path (a tensor rate per step, through ``unroll``) against
    torch.optim.Adam on a plain loop, its rate changed before every step."""
    torch.manual_seed(0)
    model = Tiny().to(D)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    images = torch.randn(5, 6, 2, 4, 4, dtype=D)
    labels = torch.randint(0, 3, (5, 6))
    lrs = torch.tensor([0.01, 0.02, 0.005, 0.03, 0.01], dtype=D)
    rule = Adam(betas=(0.8, 0.99), eps=1e-6)
    final = unroll(StepFn(model, rule), params, images, labels, lrs, create_graph=False).params
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.8, 0.99), eps=1e-6)
    for t in range(5):
        opt.param_groups[0]["lr"] = lrs[t].item()
        opt.zero_grad()
        F.cross_entropy(model(images[t]), labels[t]).backward()
        opt.step()
    for k, p in model.named_parameters():
        torch.testing.assert_close(final[k], p.detach(), rtol=1e-12, atol=1e-14)
        assert not torch.equal(final[k], params[k])


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_adam_meta_gradient_matches_finite_differences(mode):
    """Images, learned rates and learned labels through 4 Adam steps on class-balanced
    minibatches: the adjoint carries Adam's m and v."""
    model, params, images, hard, soft, _, x, y = _problem(steps=2, epochs=2, k=2)
    g = torch.Generator().manual_seed(3)
    raw = raw_from_lrs(torch.full((4,), 0.05, dtype=D)) + 0.1 * torch.randn(4, generator=g, dtype=D)
    slot_classes = torch.arange(12) % 6 // 2
    schedule = BalancedSchedule(slot_classes, 3, 4, seed=2)
    step = StepFn(model, Adam(betas=(0.9, 0.99), eps=1e-8))
    learned = {"images": images, "raw_lrs": raw, "soft_labels": soft}
    _check_against_finite_differences(step, model, params, learned, hard, schedule, x, y,
                                      mode=mode, window=(1, 4))


def test_adam_where_a_gradient_is_exactly_zero_gives_a_finite_meta_gradient():
    """A pixel that is 0 in every synthetic image gives its first-layer weights a zero
    gradient, so v = 0 there: sqrt's infinite derivative must not make NaN."""
    model, params, images, hard, _, raw, x, y = _problem()
    images = images.clone()
    images[..., 0, 0, 0] = 0.0
    from ddcli.core.meta_gradient import outer_loss
    from ddcli.core.unroll import adjoint_of, differentiate_unroll

    got = differentiate_unroll(StepFn(model, Adam()), adjoint_of(lambda p: outer_loss(model, p, x, y)),
                               params, {"images": images, "raw_lrs": raw}, labels=hard)
    assert all(torch.isfinite(v).all() for v in got.grads.values())
    v = torch.tensor([0.0, 4.0], requires_grad=True)
    s = _sqrt(v)
    assert torch.equal(s, v.detach().sqrt())
    assert torch.equal(torch.autograd.grad(s.sum(), v)[0], torch.tensor([0.0, 0.25]))


# --- through the engine --------------------------------------------------------------------

RATBPTT = {"synth": {"steps": 1, "images_per_class": 3, "unroll_steps": 6,
                     "inner_batch_per_class": 2, "window": 3, "window_sampling": "random",
                     "inner_optimizer": "adam", "step_lr": 0.01},
           "optim": {"iterations": 6, "clip_ema_factor": 0.5}}  # 0.5: every iteration clips


def test_ratbptt_recipe_resumes_bit_exactly_with_its_clipping_average(tmp_path):
    data = toy_data()
    for labels in (False, True):
        c = toy_config(RATBPTT, {"synth": {"learn_labels": labels}})
        full = distill(c, out=tmp_path / f"{labels}-full.safetensors", data=data)
        distill_until_ctrl_c(c, tmp_path / f"{labels}-part.safetensors", data, at=3)
        stored = torch.load(tmp_path / f"{labels}-part.run" / "checkpoint.pt", weights_only=True)
        assert stored["clip_average"].dim() == 0 and stored["clip_average"] > 0
        resumed = resume(tmp_path / f"{labels}-part.run", data=data).bundle
        assert torch.equal(full.bundle.images, resumed.images)
        assert torch.equal(full.bundle.raw_lrs, resumed.raw_lrs)
        if labels:
            assert torch.equal(full.bundle.soft_labels, resumed.soft_labels)
    # The clipping did something: without it the set comes out otherwise.
    c = toy_config(RATBPTT, {"optim": {"clip_ema_factor": None}})
    unclipped = distill(c, out=tmp_path / "u.safetensors", data=data).bundle
    assert not torch.equal(unclipped.images, full.bundle.images)


def test_replay_in_eval_uses_the_sets_balanced_draws_and_adam(tmp_path):
    from ddcli.core.metrics import accuracy
    from ddcli.evaluate import evaluate_bundle
    from ddcli.evaluate._replay_protocol import inner_loop_of
    from ddcli.models import create_model

    data = toy_data()
    c = toy_config(RATBPTT, {"optim": {"iterations": 3}})
    b = distill(c, out=tmp_path / "b.safetensors", data=data).bundle
    inner = inner_loop_of(b)
    assert inner == InnerLoop.from_config(c, b.images.shape[1])  # the run's own loop
    assert inner.rule == Adam() and inner.inner_batch_per_class == 2
    model = create_model(**b.model)
    schedule = inner.schedule(derive_seed(0, "replay-schedule"))
    assert isinstance(schedule, BalancedSchedule)
    final = unroll(StepFn(model, Adam()), b.init_params, b.images, b.labels, b.lrs,
                   create_graph=False, schedule=schedule).params
    want = accuracy(model, final, data.test_x, data.test_y)
    report = evaluate_bundle(tmp_path / "b.safetensors", data=data, n_nets=1)
    assert report.rows[0].accuracies[0] == pytest.approx(want)
    # Nets stacked under vmap replay as they do one by one (Adam's state stacks too).
    from ddcli.core.params import init_params
    from ddcli.evaluate._many_nets import replay_accuracies

    inits = [init_params(model, "default", s) for s in (1, 2, 3)]
    args = (model, inits, b.images, b.labels, b.lrs, data.test_x, data.test_y)
    stacked = replay_accuracies(*args, batched=True, inner=inner)
    looped = replay_accuracies(*args, batched=False, inner=inner)
    torch.testing.assert_close(stacked, looped)


@pytest.mark.parametrize("args, needle", [
    (["--clip-ema-factor", "-1"], "--clip-ema-factor must be a positive number"),
    (["--clip-ema-decay", "1"], "--clip-ema-decay must be in [0, 1)"),
    (["--steps", "1", "--ipc", "2", "--inner-batch-per-class", "3"], "exceeds the 2 images of each class"),
    (["--inner-batch", "4", "--inner-batch-per-class", "1"], "give one"),
    (["--inner-optimizer", "rmsprop"], "--inner-optimizer"),
])
def test_bad_ratbptt_flags_are_one_line_usage_errors(tmp_path, args, needle):
    from tests._cli import one_line_error, run

    err = one_line_error(run("distill", "mnist", "--dry-run", *args), 2)
    assert needle in err
