"""The inner loop and the meta-gradient: exact against independent computations."""

import copy
import json
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.multiprocessing.reductions import StorageWeakRef

from ddcli.config import DistillConfig, replace
from ddcli.core.memory import estimate_memory
from ddcli.core.meta_gradient import meta_gradient
from ddcli.core.params import init_params
from ddcli.core.rates import lrs_from_raw, raw_from_lrs
from ddcli.core.unroll import unroll
from ddcli.models import create_model
from tests._toy import Tiny

softplus_inverse = raw_from_lrs




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
    final = unroll(model, params, images, labels, lrs_from_raw(raw), create_graph=False).params
    with torch.no_grad():
        return F.cross_entropy(torch.func.functional_call(model, final, (real_x,)), real_y).item()


def test_raw_rates_roundtrip():
    assert lrs_from_raw(raw_from_lrs(0.02)).item() == pytest.approx(0.02, rel=1e-6)
    rates = torch.tensor([1e-4, 0.02, 0.3, 1.5, 10.0], dtype=torch.float64)
    raw = raw_from_lrs(rates)
    assert raw.dtype == torch.float64
    assert torch.allclose(lrs_from_raw(raw), rates, rtol=1e-12, atol=0)
    # The map is softplus, eta = log(1 + e^r), written out here apart from the code: a
    # round trip alone would pass for any invertible map (exp and log, say).
    for r in (-20.0, -1.0, 0.0, 0.5, 3.0, 30.0):
        want = math.log1p(math.exp(r))
        assert lrs_from_raw(torch.tensor(r, dtype=torch.float64)).item() == pytest.approx(
            want, rel=1e-12)
        assert raw_from_lrs(torch.tensor(want, dtype=torch.float64)).item() == pytest.approx(
            r, rel=1e-9, abs=1e-9)


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


def test_memory_modes_agree_in_float64_on_a_conv_net_with_a_custom_outer_loss():
    """LeNet (conv, max-pool), T = 2 epochs x 2 steps, and an attack-style relabelled loss."""
    model, params, images, labels, raw, x, y = _lenet_problem(2)
    model = model.double()
    params = {k: v.double() for k, v in params.items()}
    images, raw, x = images.double(), torch.cat([raw, raw]).double(), x.double()

    def attack_loss(m, p, xx, yy):
        return F.cross_entropy(torch.func.functional_call(m, p, (xx,)), yy.masked_fill(yy == 3, 5))

    ref = meta_gradient(model, params, images, labels, raw, x, y, mode="full", loss_fn=attack_loss)
    for mode in ("stepwise", "recompute"):
        got = meta_gradient(model, params, images, labels, raw, x, y, mode=mode, loss_fn=attack_loss)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)


def test_unroll_equals_plain_sgd_loop():
    """The functional unroll against torch.optim.SGD stepping a stateful module copy."""
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    params = init_params(model, "xavier", seed=3)
    steps, epochs = 3, 2
    images = torch.randn(steps, 10, 1, 28, 28)
    labels = torch.arange(10).expand(steps, 10)
    lrs = torch.tensor([0.05, 0.02, 0.03, 0.01, 0.04, 0.02])
    final, trace, _ = unroll(model, params, images, labels, lrs, create_graph=False, trace=True)
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


# --- memory modes: bounded graphs and the --dry-run estimate ------------------------------


class _Box:
    __slots__ = ("t", "__weakref__")


def _peak_graph_bytes(fn) -> int:
    """Peak bytes of distinct storages held by autograd graphs while ``fn`` runs.

    Every saved tensor is packed in a box that lives exactly as long as the graph node
    holding it; a storage counts while any box refers to it.
    """
    live, refs = {"now": 0, "peak": 0}, {}

    def release(key):
        refs[key][0] -= 1
        if refs[key][0] == 0:
            live["now"] -= refs.pop(key)[1]

    def pack(t):
        box = _Box()
        box.t = t
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in refs:
            refs[key] = [0, t.untyped_storage().nbytes()]
            live["now"] += refs[key][1]
            live["peak"] = max(live["peak"], live["now"])
        refs[key][0] += 1
        weakref.finalize(box, release, key)
        return box

    with saved_tensors_hooks(pack, lambda box: box.t):
        fn()
    return live["peak"]


def _lenet_problem(steps: int):
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    params = init_params(model, "xavier", seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(steps, 10, 1, 28, 28, generator=g)
    labels = torch.arange(10).expand(steps, 10)
    raw = softplus_inverse(0.02).repeat(steps)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    return model, params, images, labels, raw, x, y


def test_recompute_graph_memory_does_not_grow_with_steps():
    peaks = {mode: [_peak_graph_bytes(lambda: meta_gradient(*_lenet_problem(t), mode=mode))
                    for t in (2, 8)] for mode in ("full", "stepwise", "recompute")}
    assert peaks["recompute"][0] == peaks["recompute"][1]  # one step's graph, whatever T
    for mode in ("full", "stepwise"):  # every step's graph alive at once
        assert peaks[mode][1] > 2 * peaks[mode][0], (mode, peaks)
    assert peaks["recompute"][1] < peaks["full"][1] / 3


def test_memory_estimate_matches_the_graphs_autograd_keeps():
    model = _lenet_problem(1)[0]
    cfg = DistillConfig.from_dict({"synth": {"steps": 2, "epochs": 1}, "data": {"batch_size": 32}})
    est = estimate_memory(cfg, model=model, train_size=600, test_size=500)
    per_step = (_peak_graph_bytes(lambda: meta_gradient(*_lenet_problem(8), mode="stepwise"))
                - _peak_graph_bytes(lambda: meta_gradient(*_lenet_problem(2), mode="stepwise"))) / 6
    assert est.step_graph == pytest.approx(per_step, rel=0.1)
    long = estimate_memory(replace(cfg, synth={"epochs": 50}), model=model, train_size=600,
                           test_size=500)
    # T = 2 -> 100: full grows by T * step graph, recompute only by T * |theta|.
    assert long.graphs["full"] - est.graphs["full"] == 98 * est.step_graph
    assert long.graphs["recompute"] - est.graphs["recompute"] == 98 * est.weights
    assert long.modes["recompute"] < long.modes["full"] / 2


def test_memory_estimate_under_compile_is_the_compiled_reverse_loop_s():
    """--compile on one net runs full and recompute as the compiled reverse loop: both
    keep (theta_t, s_t, g_t) per differentiated step and one step's work at a time."""
    model = _lenet_problem(1)[0]
    cfg = DistillConfig.from_dict({"synth": {"steps": 2, "epochs": 1},
                                   "data": {"batch_size": 32}, "run": {"compile": True}})
    est = estimate_memory(cfg, model=model, train_size=600, test_size=500)
    long = estimate_memory(replace(cfg, synth={"epochs": 50}), model=model, train_size=600,
                           test_size=500)
    plain = estimate_memory(replace(cfg, run={"compile": False}), model=model,
                            train_size=600, test_size=500)
    plain_long = estimate_memory(replace(cfg, run={"compile": False}, synth={"epochs": 50}),
                                 model=model, train_size=600, test_size=500)
    assert est.graphs["full"] == est.graphs["recompute"]
    assert est.graphs["full"] - plain.graphs["recompute"] == 3 * est.weights  # g_t, T = 2
    assert long.graphs["full"] - est.graphs["full"] == 98 * 2 * est.weights  # GD: no state
    assert long.graphs["full"] < plain_long.graphs["full"] / 2
    assert est.graphs["stepwise"] == plain.graphs["stepwise"]


def test_memory_estimate_of_trajectory_matching_has_no_real_batch():
    """MTT's outer loss is a distance to expert weights: no real batch and no forward pass,
    but a target's weights per net and the closed-form adjoint (theta_N - target) / len."""
    model = _lenet_problem(1)[0]
    cfg = DistillConfig.from_dict({"synth": {"steps": 2, "epochs": 3},
                                   "data": {"batch_size": 256}})
    real = estimate_memory(cfg, model=model, train_size=600, test_size=500)
    seg = estimate_memory(cfg, model=model, train_size=600, test_size=500,
                          needs="expert-segment")
    assert real.real_batch == 256 * 28 * 28 * 4 and seg.real_batch == 0
    assert seg.step_graph == real.step_graph and seg.steps == real.steps == 6
    assert seg.outer_graph == 2 * seg.weights < real.outer_graph
    assert seg.common - real.common == seg.weights - real.real_batch
    for mode in seg.modes:
        assert seg.graphs[mode] - real.graphs[mode] == seg.outer_graph - real.outer_graph


def _rule_peak(rule, steps: int, window: tuple[int, int] | None = None) -> int:
    from ddcli.core.meta_gradient import NetsMetaGradient
    from ddcli.core.steps import StepFn

    model, params, images, labels, raw, x, y = _lenet_problem(steps)
    nets = NetsMetaGradient(StepFn(model, rule), mode="stepwise", batch=False)
    return _peak_graph_bytes(lambda: nets([params], {"images": images, "raw_lrs": raw}, x, y,
                                          labels=labels, window=window))


def test_memory_estimate_follows_the_sets_inner_loop():
    """One InnerLoop drives the estimate: each of its parts moves it the right way."""
    model = _lenet_problem(1)[0]
    base = {"synth": {"steps": 4, "epochs": 3}, "data": {"batch_size": 32}}

    def est(**synth):
        cfg = DistillConfig.from_dict({**base, "synth": {**base["synth"], **synth}})
        return estimate_memory(cfg, model=model, train_size=600, test_size=500)

    plain = est()
    assert plain.differentiated == plain.steps == 12 and plain.state == 0
    window = est(window=3)  # only W = 3 of the 12 steps keep graphs (or carries)
    assert window.differentiated == 3 and window.steps == 12
    assert plain.graphs["full"] - window.graphs["full"] == 9 * plain.step_graph
    assert plain.graphs["recompute"] - window.graphs["recompute"] == 9 * plain.weights
    sgd, adam = est(inner_optimizer="sgd"), est(inner_optimizer="adam")
    assert sgd.state == plain.weights and adam.state == 2 * plain.weights  # momentum; m and v
    # SGD's step keeps its new momentum b where GD's keeps the gradient (theta - eta * b):
    # the same size, but for a scalar or two that the rule may save (4 bytes seen on a
    # fresh install), far below one weight tensor.
    assert abs(plain.step_graph - sgd.step_graph) <= 64 < plain.weights
    assert sgd.step_graph < adam.step_graph
    for mode in ("full", "recompute"):
        assert plain.modes[mode] < sgd.modes[mode] < adam.modes[mode]
    # every carry keeps (theta_t, b_t); the measured step graphs may differ by the
    # scalars above
    assert abs(sgd.graphs["recompute"] - plain.graphs["recompute"] - (12 + 1) * sgd.state) <= 64
    soft = est(learn_labels=True)  # one learned vector per image, with grad and Adam moments
    assert soft.synthetic - plain.synthetic == 4 * (4 * 10) * 10 * 4
    small = est(inner_batch=4)  # a step's graph on 4 images, not 10
    assert small.step_graph < plain.step_graph and small.modes["full"] < plain.modes["full"]
    two = est(images_per_class=2)
    per_class = est(images_per_class=2, inner_batch_per_class=1)  # 10 of the 20 a step
    assert per_class.step_graph == plain.step_graph < two.step_graph
    # Each rule's step graph is what autograd keeps for one; a window keeps W of them.
    from ddcli.core.steps import SGD, Adam

    for name, rule in (("sgd", SGD()), ("adam", Adam())):
        cfg = DistillConfig.from_dict({"synth": {"steps": 2, "epochs": 1,
                                                 "inner_optimizer": name},
                                       "data": {"batch_size": 32}})
        one = estimate_memory(cfg, model=model, train_size=600, test_size=500)
        measured = (_rule_peak(rule, 8) - _rule_peak(rule, 2)) / 6
        assert one.step_graph == pytest.approx(measured, rel=0.1), name
    assert _rule_peak(SGD(), 8, window=(6, 8)) == pytest.approx(_rule_peak(SGD(), 2), rel=0.05)


def test_dry_run_prints_every_mode_and_trains_nothing(tmp_path, fixture_root, monkeypatch):
    from typer.testing import CliRunner

    from ddcli.cli import app
    from ddcli.engine import timing

    # T = 300 iterations take seconds each; the time estimate has its own tests
    # (tests/test_dry_run_time.py).
    monkeypatch.setattr(timing, "estimate_time", lambda cfg, **kw: timing.TimeEstimate(
        iterations=1, s_per_iteration=1.0, measured=1, evaluations=0, s_per_eval=0.0))

    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(app, ["distill", "mnist", "--data-root", str(fixture_root), "--dry-run",
                                 "--epochs", "30", "--unroll-memory", "recompute", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    assert {"full", "stepwise", "recompute"} <= set(rows)
    assert "this run" in rows["recompute"] and "T = 300" in r.stdout
    assert not out.exists() and not (tmp_path / "m.run").exists()
    r = CliRunner().invoke(app, ["distill", "mnist", "--data-root", str(fixture_root), "--dry-run",
                                 "--json"])
    modes = json.loads(r.stdout)["estimate_bytes"]["modes"]
    assert modes["recompute"] <= modes["stepwise"] == modes["full"]


def test_inner_threads_change_nothing_but_threads():
    problem = _lenet_problem(2)
    before = torch.get_num_threads()
    ref = meta_gradient(*problem, mode="full")
    for mode in ("full", "recompute"):
        got = meta_gradient(*problem, mode=mode, inner_threads=1)
        assert torch.get_num_threads() == before
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
