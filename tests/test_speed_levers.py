"""The speed levers of issue 14 change kernels, not results: each is held to the plain path.

- pool before ReLU in LeNet and AlexCifarNet: bit-identical values, first and second
  derivatives, ties included;
- the outer loss in chunks of the real batch, and on a channels-last batch: equal to the
  plain outer loss to float64 round-off;
- ATen's convolutions for a small unroll: only inside the unroll, the outer loss keeps
  the setting it found; the same meta-gradient up to float32 rounding;
- ``--precision bf16-outer``: runs, stays close, and is refused on resume;
- the CPU policies that pick them, and bit-exact resume with all of them on.
"""


import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddcli import DistillConfig, distill, resume
from ddcli.config import resumable_settings
from ddcli.core.meta_gradient import NetsMetaGradient, channels_last, meta_gradient, outer_chunks
from ddcli.core.rates import raw_from_lrs
from ddcli.core.steps import StepFn
from ddcli.errors import ConfigError
from ddcli.infra import device as _device
from ddcli.models import create_model, init_weights

from tests._toy import distill_until_ctrl_c, toy_data

CPU = torch.device("cpu")


def _conventional(model: nn.Module) -> nn.Module:
    """The same modules (shared weights) in the textbook order: conv -> ReLU -> pool."""
    f = model.features
    ref = nn.Module()
    if isinstance(f[1], nn.MaxPool2d) and isinstance(f[2], nn.ReLU) and len(f) == 6:  # LeNet
        ref.features = nn.Sequential(f[0], f[2], f[1], f[3], f[5], f[4])
    else:  # AlexCifarNet: only the first block is reordered
        ref.features = nn.Sequential(f[0], f[2], f[1], *f[3:])
    ref.classifier = model.classifier
    ref.forward = lambda x: ref.classifier(ref.features(x))
    return ref


def _tied_images(n: int, c: int, hw: int) -> torch.Tensor:
    # MNIST-like: a constant background (tied conv outputs, tied pool windows) and a
    # patch of noise; exact zeros after the ReLU tie too.
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, c, hw, hw), -0.4242)
    x[:, :, hw // 4: hw // 2, hw // 4: 3 * hw // 4] = torch.randn(n, c, hw // 4, hw // 2,
                                                                  generator=g)
    return x


@pytest.mark.parametrize("name,c,hw", [("lenet", 1, 28), ("alexcifarnet", 3, 32)])
def test_pool_before_relu_is_bit_identical_with_ties_to_second_order(name, c, hw):
    model = init_weights(create_model(name, in_channels=c, num_classes=10, image_size=hw),
                         "xavier", generator=torch.Generator().manual_seed(1))
    ref = _conventional(model)
    x = _tied_images(6, c, hw).requires_grad_(True)
    y = torch.arange(6)
    first = model.features[0](x).detach()
    windows = F.unfold(F.relu(first), 2, stride=2).view(6, first.shape[1], 4, -1)
    tied = (windows == windows.amax(2, keepdim=True)) & (windows > 0)
    assert (tied.sum(2) > 1).any()  # the input does exercise tied, positive maxima
    params = list(model.parameters())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) for p in params]
    results = []
    for net in (model, ref):
        out = net(x)
        g = torch.autograd.grad(F.cross_entropy(out, y), [x, *params], create_graph=True)
        hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g[1:], v)), [x, *params])
        results.append([out, *g, *hvp])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_model_parameter_names_are_those_of_the_textbook_order():
    lenet = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    alex = create_model("alexcifarnet", in_channels=3, num_classes=10, image_size=32)
    assert [k for k, _ in lenet.named_parameters()][:4] == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"]
    assert [k for k, _ in alex.named_parameters()][:4] == [
        "features.0.weight", "features.0.bias", "features.4.weight", "features.4.bias"]


def test_outer_chunks_are_equal_and_cover_the_batch():
    assert [(s.start, s.stop) for s in outer_chunks(1024, 301)] == [
        (0, 256), (256, 512), (512, 768), (768, 1024)]
    assert outer_chunks(7, None) == [slice(0, 7)]
    assert [(s.start, s.stop) for s in outer_chunks(7, 3)] == [(0, 3), (3, 6), (6, 7)]


def _lenet_problem(dtype=torch.float64, real=9):
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28).to(dtype)
    init_weights(model, "xavier", generator=torch.Generator().manual_seed(0))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 10, 1, 28, 28, generator=g, dtype=dtype)
    labels = torch.arange(10).expand(2, 10).contiguous()
    raw = raw_from_lrs(torch.full((4,), 0.02, dtype=dtype))
    x = _tied_images(real, 1, 28).to(dtype)
    y = torch.randint(0, 10, (real,), generator=g)
    return model, params, images, labels, raw, x, y


@pytest.mark.parametrize("options", [{"outer_chunk": 4}, {"outer_chunk": 1},
                                     {"real_nhwc": True}, {"real_nhwc": True, "outer_chunk": 4}])
def test_chunked_and_channels_last_outer_loss_equal_the_plain_one_in_float64(options):
    problem = _lenet_problem()
    plain = meta_gradient(*problem, outer_chunk=0)
    got = meta_gradient(*problem, **options)
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_chunked_outer_loss_of_stacked_nets_equals_the_plain_one_in_float64():
    model, params, images, labels, raw, x, y = _lenet_problem()
    other = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4),
                                       dtype=v.dtype) for k, v in params.items()}
    learned = {"images": images, "raw_lrs": raw}
    runs = [NetsMetaGradient(StepFn(model), mode="full", **options)(
        [params, other], learned, x, y, labels=labels)
        for options in ({"outer_chunk": 0}, {"outer_chunk": 2, "real_nhwc": True})]
    torch.testing.assert_close(runs[1].loss, runs[0].loss, rtol=1e-12, atol=0)
    for k in learned:
        torch.testing.assert_close(runs[1].grads[k], runs[0].grads[k], rtol=1e-12, atol=1e-14)


def test_channels_last_keeps_the_values_and_gives_nhwc_strides():
    for c in (1, 3):
        x = torch.randn(2, c, 5, 5)
        nhwc = channels_last(x)
        assert torch.equal(nhwc, x) and nhwc.stride()[1] == 1
        out = F.conv2d(nhwc, torch.randn(4, c, 3, 3))
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_aten_convolutions_only_inside_the_unroll_and_the_same_meta_gradient():
    model, params, images, labels, raw, x, y = _lenet_problem(torch.float32)
    seen = {"inner": set(), "outer": set()}
    outer_calls = {"n": 0}

    def loss_fn(m, p, xx, yy):
        outer_calls["n"] += 1
        seen["outer"].add(torch.backends.mkldnn.enabled)
        return F.cross_entropy(torch.func.functional_call(m, p, (xx,)), yy)

    def record(*_):  # inner steps run before the outer loss; sizing runs without grad
        if outer_calls["n"] == 0 and torch.is_grad_enabled():
            seen["inner"].add(torch.backends.mkldnn.enabled)

    hook = model.features[0].register_forward_pre_hook(record)
    before = torch.backends.mkldnn.enabled
    aten = meta_gradient(model, params, images, labels, raw, x, y, loss_fn=loss_fn,
                         inner_onednn=False)
    hook.remove()
    assert seen == {"inner": {False}, "outer": {before}}
    assert torch.backends.mkldnn.enabled == before
    plain = meta_gradient(model, params, images, labels, raw, x, y)
    for a, b in zip(aten, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_outer_runs_and_stays_close_to_fp32():
    problem = _lenet_problem(torch.float32, real=32)
    fp32 = meta_gradient(*problem)
    bf16 = meta_gradient(*problem, precision="bf16-outer")
    assert all(t.dtype == torch.float32 for t in bf16)
    torch.testing.assert_close(bf16[0], fp32[0], rtol=2e-2, atol=0)
    for a, b in zip(bf16[1:], fp32[1:]):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98
        assert not torch.equal(a, b)  # it is a different computation, not a no-op
    with pytest.raises(ValueError, match="precision"):
        meta_gradient(*problem, precision="fp16")


def test_precision_is_validated_and_not_resumable():
    assert DistillConfig().run.precision == "fp32"
    DistillConfig.from_dict({"run": {"precision": "bf16-outer"}}).validate()
    with pytest.raises(ConfigError, match="--precision"):
        DistillConfig.from_dict({"run": {"precision": "bf16"}}).validate()
    assert ("run", "precision") not in resumable_settings()


def test_cpu_policies_and_their_overrides(monkeypatch):
    small, large = _device.SMALL_STEP_FLOATS, _device.SMALL_STEP_FLOATS + 1
    for var in ("DDCLI_UNROLL_ONEDNN", "DDCLI_UNROLL_THREADS", "DDCLI_REAL_NHWC"):
        monkeypatch.delenv(var, raising=False)
    assert _device.unroll_onednn(CPU, small) is False and _device.unroll_onednn(CPU, large) is None
    assert _device.inner_threads(CPU, small) == 1 and _device.inner_threads(CPU, large) is None
    cuda = torch.device("cuda", 0)
    assert _device.unroll_onednn(cuda, small) is None and _device.inner_threads(cuda, small) is None
    assert _device.real_batch_nhwc(CPU) and not _device.real_batch_nhwc(cuda)
    monkeypatch.setenv("DDCLI_UNROLL_ONEDNN", "1")
    assert _device.unroll_onednn(CPU, small) is None
    monkeypatch.setenv("DDCLI_UNROLL_ONEDNN", "0")
    assert _device.unroll_onednn(CPU, large) is False
    monkeypatch.setenv("DDCLI_UNROLL_THREADS", "2")
    assert _device.inner_threads(CPU, small) == 2
    monkeypatch.setenv("DDCLI_UNROLL_THREADS", "0")
    assert _device.inner_threads(CPU, small) is None
    monkeypatch.setenv("DDCLI_REAL_NHWC", "0")
    assert not _device.real_batch_nhwc(CPU)
    monkeypatch.setenv("DDCLI_REAL_NHWC", "1")
    assert _device.real_batch_nhwc(CPU) and _device.real_batch_nhwc(cuda)


def _conv_cfg(**run) -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "convnet", "init_scheme": "xavier", "kwargs": {"width": 4, "depth": 2}},
        "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
        "optim": {"iterations": 6, "meta_lr": 0.05, "decay_every": 1.0},
        "run": {"checkpoint_every": 3, "log_every": 1, "device": "cpu", **run},
    })


@pytest.mark.parametrize("precision", ["fp32", "bf16-outer"])
def test_resume_is_bit_exact_on_a_conv_net_with_the_cpu_levers(tmp_path, precision):
    data = toy_data()
    c = _conv_cfg(precision=precision)
    full = distill(c, out=tmp_path / "full.safetensors", data=data)

    distill_until_ctrl_c(c, tmp_path / "part.safetensors", data, at=3)
    with pytest.raises(ConfigError, match="--precision"):
        other = "fp32" if precision != "fp32" else "bf16-outer"
        resume(tmp_path / "part.run", overrides={"run": {"precision": other}}, data=data)
    resumed = resume(tmp_path / "part.run", data=data)
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert torch.equal(full.bundle.raw_lrs, resumed.bundle.raw_lrs)
    assert full.bundle.config["run"]["precision"] == precision


# --- torch.compile'd training steps of the train protocols ---------------------------

def test_compiled_training_steps_equal_the_eager_ones():
    from torch._dynamo.utils import counters

    from ddcli.core import steps
    from ddcli.core.augment import parse_augment
    from ddcli.evaluate import train_nets

    torch.manual_seed(0)
    model = create_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4,
                         depth=2)
    p0 = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(12, 1, 8, 8), torch.arange(3).repeat_interleave(4)
    kw = dict(lr=0.05, epochs=6, seeds=[3], batch_size=5, batched=False, decay_epoch=3,
              reset_momentum=True, augment=parse_augment("dsa"))
    graphs = counters["stats"]["unique_graphs"]
    [(_, eager)] = train_nets(model, [p0], x, y, **kw)
    assert model not in steps._COMPILED_LOSS and counters["stats"]["unique_graphs"] == graphs
    [(_, compiled)] = train_nets(model, [p0], x, y, compiled=True, **kw)
    assert model in steps._COMPILED_LOSS and model not in steps._COMPILED
    # batches of 5, 5 and 2: one graph per shape, compiled once and reused
    assert counters["stats"]["unique_graphs"] - graphs == 2
    for k in eager:
        assert not torch.equal(eager[k], p0[k][None])
        # 18 SGD steps with momentum; fused kernels round differently, nothing more
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-6)


def test_eval_compile_flag_reaches_the_training_step(tmp_path, monkeypatch):
    from ddcli.core import steps
    from ddcli.evaluate import evaluate_bundle
    from tests.test_protocols import _toy_bundle

    calls = []

    def eager_grads(model):  # the wiring, without a minute of compiling
        step = StepFn(model)

        def grads(params, x, y):
            calls.append(x.shape[0])
            with torch.enable_grad():
                return step.grads(params, x, y, create_graph=False)
        return grads

    monkeypatch.setattr(steps, "compiled_loss_grads", eager_grads)
    data, path = _toy_bundle(tmp_path)
    kw = dict(data=data, protocol="train", train_epochs=3, n_nets=2, train_lr=0.05)
    plain = evaluate_bundle(path, **kw)
    assert calls == []
    rep = evaluate_bundle(path, compile=True, **kw)
    assert len(calls) == 2 * 3  # 2 nets x 3 epochs of one batch
    assert rep.settings["compile"] is True and rep.primary.accuracies == plain.primary.accuracies
    assert any("torch.compile" in n for n in rep.notes)


@pytest.mark.parametrize("in_ch, padding, size", [(1, 3, 28), (1, 1, 8), (3, 1, 7)])
def test_conv3x3_as_1x1_is_the_convolution(in_ch, padding, size):
    from ddcli.models._convnet import conv3x3_as_1x1

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, in_ch, size, size + 2, dtype=torch.float64, generator=g)
    w = torch.randn(5, in_ch, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(5, dtype=torch.float64, generator=g)
    for t in (x, w, b):
        t.requires_grad_(True)
    want = F.conv2d(x, w, b, padding=padding)
    got = conv3x3_as_1x1(x, w, b, padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for gw, gg in zip(torch.autograd.grad(want, (x, w, b), cot),
                      torch.autograd.grad(got, (x, w, b), cot)):
        torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-12)


def test_compiled_one_channel_convnet_takes_the_1x1_form():
    import torch._dynamo

    graphs = []

    def capture(gm, example_inputs):  # a torch.compile backend that keeps the graph
        graphs.append(gm)
        return gm.forward

    for in_ch, stacked in ((1, True), (3, False)):
        model = create_model("convnet", in_channels=in_ch, num_classes=3, image_size=28,
                             width=4, depth=2).double()
        x = torch.randn(2, in_ch, 28, 28, dtype=torch.float64)
        torch._dynamo.reset()
        graphs.clear()
        out = torch.compile(model, backend=capture, fullgraph=True)(x)
        torch.testing.assert_close(out, model(x), rtol=1e-10, atol=1e-12)
        [gm] = graphs
        code = gm.code
        assert ("torch.cat" in code) == stacked, code
        assert code.count("conv2d") == 2  # the first (either form) and the second


# --- torch.compile'd graph-free work of the unrolled family (dd distill --compile) -----

def _windowed_conv_problem():
    """A ConvNet (32 px, padding 1: no bias-only border whose tied values could sit on
    the ReLU's kink), SGD with momentum, 6 steps of which the last 3 are differentiated."""
    from ddcli.core.schedules import CyclicSchedule
    from ddcli.core.steps import SGD

    g = torch.Generator().manual_seed(0)
    model = create_model("convnet", in_channels=3, num_classes=4, image_size=32, width=8,
                         depth=2)
    init_weights(model, "xavier", generator=torch.Generator().manual_seed(1))
    params = {k: v.detach() for k, v in model.named_parameters()}
    learned = {"images": torch.randn(2, 8, 3, 32, 32, generator=g),
               "raw_lrs": raw_from_lrs(torch.full((6,), 0.05))}
    labels = torch.arange(4).repeat(2).expand(2, 8).contiguous()
    x, y = torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 4, (48,), generator=g)
    plan = dict(labels=labels, schedule=CyclicSchedule(2, 6), window=(3, 6))
    return model, SGD(momentum=0.9), params, learned, x, y, plan


def test_compiled_unroll_and_outer_loss_give_the_eager_meta_gradient(monkeypatch):
    from ddcli.core import steps

    mg = importlib.import_module("ddcli.core.meta_gradient")  # the package exports a function
    model, rule, params, learned, x, y, plan = _windowed_conv_problem()
    eager = NetsMetaGradient(StepFn(model, rule), mode="full", batch=False)([params], learned,
                                                                           x, y, **plan)
    calls = {"grads": 0, "outer": 0, "vjp": 0}
    step = StepFn(model, rule, compiled="loss")
    inner = step._compiled_grads

    def counted(*a):
        calls["grads"] += 1
        return inner(*a)

    step._compiled_grads = counted
    outer = mg.compiled_outer_loss(model, mg.outer_loss)
    mg._COMPILED_OUTER[model][mg.outer_loss] = lambda *a: (calls.__setitem__(
        "outer", calls["outer"] + 1), outer(*a))[1]
    vjp_of = steps.compiled_grad_vjp

    def counted_vjp(*a, **k):
        calls["vjp"] += 1
        return vjp_of(*a, **k)

    monkeypatch.setattr(steps, "compiled_grad_vjp", counted_vjp)
    nets = NetsMetaGradient(step, mode="full", batch=False, compiled=True, outer_chunk=16)
    compiled = nets([params], learned, x, y, **plan)
    # the 6 steps' gradients are compiled (3 before the window, 3 in it), and the
    # window's 3 VJPs; the outer loss is, chunk by chunk (48 images in chunks of 16)
    assert calls == {"grads": 6, "outer": 3, "vjp": 3}
    assert model in steps._COMPILED_LOSS and model in steps._COMPILED_VJP
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=0)
    for k, g in eager.grads.items():
        assert g.abs().sum() > 0
        # fused kernels round differently, nothing more
        torch.testing.assert_close(compiled.grads[k], g, rtol=1e-3, atol=1e-5 * g.abs().max())


def test_compiled_step_vjps_equal_autograd_s_double_backward_in_float64():
    """Inner Adam and learned soft labels, then SGD with DSA in the inner steps: each
    step's VJP, compiled, against the eager double backward, to float64 round-off (not a tolerance for
    rounding differences: an error in any term would show at 1e-3 or more)."""
    from ddcli.core.steps import Adam

    model, _, params, learned, x, y, plan = _windowed_conv_problem()
    model = model.double()
    params = {k: v.double() for k, v in params.items()}
    learned = {k: v.double() for k, v in learned.items()}
    learned["soft_labels"] = torch.softmax(
        torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64), -1)
    plan.pop("labels")
    x = x.double()
    for mode in ("full", "recompute"):
        eager = NetsMetaGradient(StepFn(model, Adam()), mode=mode, batch=False)(
            [params], learned, x, y, **plan)
        compiled = NetsMetaGradient(StepFn(model, Adam(), compiled="loss"), mode=mode,
                                    batch=False, compiled=True)([params], learned, x, y, **plan)
        torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-12, atol=0)
        for k, g in eager.grads.items():
            assert g.abs().sum() > 0, k
            torch.testing.assert_close(compiled.grads[k], g, rtol=1e-9, atol=1e-12 * g.abs().max())
    # SGD with momentum, hard labels, and DSA on every inner step's images (eager, in the
    # schedule, differentiated through by autograd around the compiled VJP)
    from ddcli.core.augment import DSA
    from ddcli.core.schedules import CyclicSchedule
    from ddcli.core.steps import SGD

    _, _, _, _, _, _, hard = _windowed_conv_problem()
    hard["schedule"] = CyclicSchedule(2, 6, augment=DSA())
    learned.pop("soft_labels")
    eager = NetsMetaGradient(StepFn(model, SGD(momentum=0.9)), mode="full", batch=False)(
        [params], learned, x, y, **hard)
    compiled = NetsMetaGradient(StepFn(model, SGD(momentum=0.9), compiled="loss"),
                                mode="full", batch=False, compiled=True)(
        [params], learned, x, y, **hard)
    for k, g in eager.grads.items():
        assert g.abs().sum() > 0, k
        torch.testing.assert_close(compiled.grads[k], g, rtol=1e-9, atol=1e-12 * g.abs().max())


def test_distill_compile_reaches_the_unroll_and_dm_s_real_side():
    from ddcli.engine.runtime import Runtime
    from tests._toy import toy_config

    conv = {"model": {"name": "convnet", "init_scheme": "xavier",
                      "kwargs": {"width": 4, "depth": 2}},
            "synth": {"steps": 2, "epochs": 2, "window": 2}}
    rt = Runtime(toy_config(conv, run={"device": "cpu", "compile": True}), toy_data())
    assert rt.step.compiled == "loss" and rt.nets.compiled and not rt.nets.real_nhwc
    plain = Runtime(toy_config(conv, run={"device": "cpu"}), toy_data())
    assert plain.step.compiled is False and not plain.nets.compiled
    dm = {"objective": {"kind": "distribution"}, "init": {"mode": "random"},
          "synth": {"steps": 1, "epochs": 1, "images_per_class": 1, "window": None},
          "data": {"augment": "dsa"}}
    # DM unrolls nothing: --compile reaches its real side (tests/test_distribution.py)
    dm_rt = Runtime(toy_config(conv, dm, run={"device": "cpu", "compile": True}), toy_data())
    assert dm_rt.objective.compiled and dm_rt.step.compiled is False
    with pytest.raises(ValueError, match="compiled must be one of"):
        StepFn(rt.model, compiled="fast")
