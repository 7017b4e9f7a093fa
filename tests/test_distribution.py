"""Distribution matching (``--objective distribution``): its loss and gradient against
independent computations, Siamese DSA, class batches, the engine around it, resume."""

import pytest
import torch
import torch.nn.functional as F

from ddcli import Bundle, distill
from ddcli.layering import build_config
from ddcli.core.augment import DSA, FAMILIES
from ddcli.core.distribution import (DistributionMatching, class_images, distribution_loss,
                                     embedding)
from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.objectives import CLASS_BATCHES, OuterBatch, list_objectives, make_objective
from ddcli.core.params import init_params
from ddcli.core.rates import initial_raw_lrs, lrs_from_raw
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import StepFn
from ddcli.engine.batches import ClassBatchSampler
from ddcli.engine.inits import real_initial_images
from ddcli.errors import ConfigError
from ddcli.evaluate import evaluate_bundle
from ddcli.models import create_model

from tests._cli import one_line_error, run
from tests._toy import toy_config, toy_data, straight_and_resumed

DM = {"objective": {"kind": "distribution"}, "init": {"mode": "random"},
      "model": {"name": "convnet", "init_scheme": "default", "kwargs": {"width": 4, "depth": 2}},
      "synth": {"steps": 1, "epochs": 1, "images_per_class": 2, "step_lr": 0.01},
      "data": {"batch_size": 8},
      "optim": {"iterations": 6, "meta_optimizer": "sgd", "meta_lr": 1.0, "decay_factor": 1.0}}


def _set(classes=3, k=2, steps=1, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(steps, classes * k, 1, hw, hw, generator=g, dtype=torch.float64)
    real = [torch.randn(5 + c, 1, hw, hw, generator=g, dtype=torch.float64) for c in range(classes)]
    return images, real


def _grad(objective, model, inits, images, real, seed=3, nhwc=False):
    nets = NetsMetaGradient(StepFn(model), mode="full", batch=False, real_nhwc=nhwc)
    out = objective.meta_gradient(nets, inits, {"images": images}, OuterBatch(seed, per_class=real))
    return out.loss, out.grads["images"]


def test_gradient_is_the_closed_form_when_the_embedding_is_the_image():
    """An MLP without hidden layers embeds x as flatten(x), so L = sum_c ||mean R_c -
    mean S_c||^2 and dL/ds = -2/k (mean R_c - mean S_c) for each of class c's k images."""
    classes, k = 3, 2
    images, real = _set(classes, k, steps=2)  # two steps: class c has 2 * k images
    model = create_model("mlp", in_channels=1, num_classes=classes, image_size=8, hidden=[])
    model = model.double()
    inits = [{n: p.detach() for n, p in model.named_parameters()}] * 2  # two nets: twice
    loss, grad = _grad(DistributionMatching(classes), model, inits, images, real)

    want_loss, want = torch.zeros((), dtype=torch.float64), torch.zeros_like(images)
    for c in range(classes):
        syn = images[:, c * k:(c + 1) * k]  # (2, k, 1, 8, 8)
        diff = real[c].mean(0) - syn.mean((0, 1))  # (1, 8, 8)
        want_loss += 2 * diff.pow(2).sum()
        want[:, c * k:(c + 1) * k] = 2 * (-2 / (2 * k)) * diff  # two nets, 2k images
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


def _convnet_embedding(p, x):
    """ConvNet's flattened features, layer by layer (not through the model or a hook)."""
    for i in (0, 4):
        w, b = p[f"features.{i}.weight"], p[f"features.{i}.bias"]
        x = F.conv2d(x, w, b, padding=1)
        x = F.group_norm(x, w.shape[0], p[f"features.{i + 1}.weight"], p[f"features.{i + 1}.bias"])
        x = F.avg_pool2d(F.relu(x), 2)
    return x.flatten(1)


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("augment", [None, DSA()])
def test_gradient_matches_plain_autograd_of_the_embedding_means(augment, nhwc):
    """Also with both sides given channels-last (the engine's CPU policy, as for the
    outer loss): the same loss and gradient, and the network does see NHWC strides."""
    classes, k = 3, 2
    images, real = _set(classes, k)
    model = create_model("convnet", in_channels=1, num_classes=classes, image_size=8,
                         width=4, depth=2).double()
    inits = [{n: v.double() for n, v in init_params(model, "default", s).items()} for s in (1, 2)]
    seen = []
    hook = model.features[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].stride()[1] == 1))  # C's stride 1: NHWC
    loss, grad = _grad(DistributionMatching(classes, augment), model, inits, images, real,
                       nhwc=nhwc)
    hook.remove()
    assert len(seen) == 2 * 2 * classes and set(seen) == {nhwc}

    leaf = images.clone().requires_grad_(True)
    siamese = DSA(siamese=True)
    total = 0
    for p in inits:
        for c in range(classes):
            r, s = real[c], leaf[0, c * k:(c + 1) * k]
            if augment is not None:
                seed = derive_seed(3, "dsa", c)
                r, s = siamese(r, seed), siamese(s, seed)
            total = total + (_convnet_embedding(p, r).detach().mean(0)
                             - _convnet_embedding(p, s).mean(0)).pow(2).sum()
    total.backward()
    torch.testing.assert_close(loss, total.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-12)


def _plain_dm(model, inits, images, real, classes, k, real_embedding=None):
    """The DM loss and image gradient by plain autograd, the real side given or eager."""
    leaf = images.clone().requires_grad_(True)
    total = 0
    for p in inits:
        for c in range(classes):
            r, s = real[c], leaf[0, c * k:(c + 1) * k]
            t = real_embedding(p, r) if real_embedding else _convnet_embedding(p, r).mean(0)
            total = total + (t.detach() - _convnet_embedding(p, s).mean(0)).pow(2).sum()
    total.backward()
    return total.detach(), leaf.grad


def test_the_compiled_real_side_gives_the_same_loss_and_gradient():
    classes, k = 3, 2
    images, real = _set(classes, k)
    model = create_model("convnet", in_channels=1, num_classes=classes, image_size=8,
                         width=4, depth=2).double()
    inits = [{n: v.double() for n, v in init_params(model, "default", s).items()} for s in (1, 2)]
    assert make_objective(toy_config(DM, run={"compile": True}), classes).compiled
    loss, grad = _grad(DistributionMatching(classes, compiled=True), model, inits, images,
                       real, nhwc=True)
    want_loss, want = _plain_dm(model, inits, images, real, classes, k)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_bf16_outer_computes_the_real_side_only_under_bfloat16():
    classes, k = 3, 2
    images64, real64 = _set(classes, k)
    images, real = images64.float(), [r.float() for r in real64]
    model = create_model("convnet", in_channels=1, num_classes=classes, image_size=8,
                         width=4, depth=2)
    inits = [init_params(model, "default", 1)]
    autocast = []
    hook = model.features[0].register_forward_pre_hook(
        lambda m, args: autocast.append(torch.is_autocast_enabled("cpu")))
    nets = NetsMetaGradient(StepFn(model), mode="full", batch=False, precision="bf16-outer")
    out = DistributionMatching(classes).meta_gradient(
        nets, inits, {"images": images}, OuterBatch(3, per_class=real))
    hook.remove()
    assert autocast == [True, False] * classes  # each class: the real side, then ours

    def real_bf16(p, r):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _convnet_embedding(p, r).mean(0).float()

    want_loss, want = _plain_dm(model, inits, images, real, classes, k, real_bf16)
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.grads["images"], want, rtol=1e-5, atol=1e-6)
    fp32_loss, _ = _plain_dm(model, inits, images, real, classes, k)
    assert out.loss != fp32_loss and torch.isclose(out.loss, fp32_loss, rtol=0.05)


def test_embedding_is_the_input_of_the_last_linear_layer():
    model = create_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4, depth=2)
    p = init_params(model, "default", 0)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(embedding(model, p, x), _convnet_embedding(p, x))
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_dsa_gives_real_and_synthetic_batches_one_transform(family):
    x = torch.randn(6, 3, 8, 8)
    dsa = DSA(families=(family,), siamese=True)
    big, small = dsa(x, 11), dsa(x[:2].clone(), 11)  # batches of different sizes, one seed
    torch.testing.assert_close(big[:2], small)
    same = dsa(x[:1].expand(4, -1, -1, -1).contiguous(), 5)  # every image transformed alike
    assert all(torch.allclose(same[0], same[i]) for i in range(1, 4))
    per_image = DSA(families=(family,))(x[:1].expand(64, -1, -1, -1).contiguous(), 5)
    assert not all(torch.allclose(per_image[0], per_image[i]) for i in range(1, 64))


def test_class_batches_hold_one_class_each_and_depend_on_the_iteration_only():
    y = torch.arange(60) % 3
    sampler = ClassBatchSampler(y, 3, 7, seed=4)
    assert sampler.iterations_per_epoch == 20 // 7
    got = [sampler.indices(it) for it in (0, 1, 5, 1)]
    fresh = ClassBatchSampler(y, 3, 7, seed=4).indices(1)
    assert all(torch.equal(a, b) for a, b in zip(got[1], fresh))
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[3]))
    for batches in got:
        for c, idx in enumerate(batches):
            assert idx.numel() == 7 and (y[idx] == c).all() and idx.unique().numel() == 7
    with pytest.raises(ConfigError, match="class 2 has no training images"):
        ClassBatchSampler(torch.tensor([0, 1, 0, 1]), 3, 2, seed=0)


def test_class_images_are_every_steps_slots_of_the_class():
    images = torch.arange(2 * 6).view(2, 6, 1, 1, 1).float()  # 2 steps, 3 classes x 2
    parts = class_images(images, 3)
    assert [p.flatten().tolist() for p in parts] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]


def test_distribution_is_registered_and_checks_its_config():
    assert {"distill", "adapt", "attack", "distribution"} <= set(list_objectives())
    obj = make_objective(toy_config(DM, data={"augment": "dsa"}), 3)
    assert obj.needs == CLASS_BATCHES and not obj.learns_rates and obj.augment.siamese
    for layer, needle in (({"init": {"mode": "fixed"}}, "--init-mode random"),
                          ({"synth": {"learn_labels": True}}, "drop --learn-labels"),
                          ({"data": {"augment": "crop-flip"}}, "not crop-flip")):
        with pytest.raises(ConfigError, match=needle):
            make_objective(toy_config(DM, layer), 3)


def test_a_run_trains_the_images_with_sgd_and_keeps_the_rates(tmp_path):
    data = toy_data()
    c = toy_config(DM, data={"augment": "dsa"})
    assert c.model_name() == "convnet"
    result = distill(c, out=tmp_path / "dm.safetensors", data=data)
    b = Bundle.load(tmp_path / "dm.safetensors")
    assert b.extra["objective"]["kind"] == "distribution"
    assert b.extra["objective"]["learned_rates"] is False
    torch.testing.assert_close(b.raw_lrs, initial_raw_lrs(0.01, 1))
    assert torch.allclose(lrs_from_raw(b.raw_lrs), torch.tensor([0.01]))
    assert b.images.shape == (1, 6, 1, 8, 8) and result.final_loss > 0
    state = torch.load(tmp_path / "dm.run" / "checkpoint.pt", weights_only=True)
    assert "momentum_buffer" in state["optimizer"]["state"][0]  # SGD with momentum
    assert len(state["optimizer"]["param_groups"][0]["params"]) == 1  # the images only


def test_the_set_matches_the_real_means_better_after_a_short_run(tmp_path):
    """DM's loss on the whole training set, under nets the run never drew, falls."""
    data = toy_data()
    c = toy_config(DM, optim={"iterations": 30})
    end = distill(c, out=tmp_path / "dm.safetensors", data=data).bundle.images
    start = distill(toy_config(DM, optim={"iterations": 1, "meta_lr": 1e-9}),
                    out=tmp_path / "start.safetensors", data=data).bundle.images
    model = create_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4, depth=2)
    real = [data.train_x[data.train_y == k] for k in range(3)]

    def loss(images):
        return sum(distribution_loss(model, init_params(model, "default", 1000 + s),
                                     class_images(images, 3), real).item() for s in range(8))

    assert loss(end) < 0.5 * loss(start)


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_resume_is_bit_exact(tmp_path, augment):
    data = toy_data()
    c = toy_config(DM, data={"augment": augment}, init={"n_nets": 2, "sample_n_nets": 2})
    full, resumed = straight_and_resumed(c, tmp_path, data)
    assert resumed.iterations == 6
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert torch.equal(full.bundle.raw_lrs, resumed.bundle.raw_lrs)
    assert full.final_loss == resumed.final_loss


def test_presets_follow_dm():
    for name, dataset in (("dm-mnist-ipc10", "mnist"), ("dm-cifar10-ipc10", "cifar10")):
        cfg = build_config(preset=name)
        assert cfg.objective.kind == "distribution" and cfg.data.dataset == dataset
        d, s = cfg.data, cfg.synth
        assert (d.batch_size, d.augment, s.images_per_class) == (256, "dsa", 10)
        assert (cfg.model.name, cfg.model.kwargs, cfg.init.mode) == ("convnet", {}, "random")
        o = cfg.optim
        assert (o.meta_optimizer, o.meta_lr, o.meta_momentum) == ("sgd", 1.0, 0.5)
        assert o.iterations == 20000
        assert cfg.synth.step_lr == 0.01 and o.decay_factor == 1.0
        assert cfg.synth.init_images == "real"


def test_cli_refuses_distribution_with_a_fixed_init(tmp_path):
    err = one_line_error(run("distill", "mnist", "--objective", "distribution",
                             "-o", tmp_path / "x.safetensors"), 2)
    assert "--init-mode random" in err


def test_dd_eval_trains_fresh_nets_on_a_dm_set(tmp_path):
    data = toy_data()
    distill(toy_config(DM), out=tmp_path / "dm.safetensors", data=data)
    report = evaluate_bundle(tmp_path / "dm.safetensors", data=data, n_nets=1, train_epochs=2)
    assert report.protocol == "train"  # nothing to replay: the rates were not learned
    assert report.settings["train_lr"] == pytest.approx(0.01)
    replayed = evaluate_bundle(tmp_path / "dm.safetensors", data=data, n_nets=1,
                               protocol="replay")
    assert replayed.protocol == "replay"  # still possible when asked for


def test_dry_run_says_distribution_matching_unrolls_nothing(tmp_path, fixture_root):
    err = one_line_error(run("distill", "mnist", "--preset", "dm-mnist-ipc10", "--dry-run",
                             "--data-root", fixture_root), 2)
    assert "unrolls nothing" in err


def test_init_images_real_gives_every_slot_a_distinct_training_image_of_its_class():
    data = toy_data(n_train=30)
    labels = torch.arange(3).repeat_interleave(2).expand(2, 6)  # 2 steps, 3 classes x 2
    images = real_initial_images(data.train_x, data.train_y, labels, seed=5)
    assert images.shape == (2, 6, 1, 8, 8)
    flat = images.flatten(0, 1)
    rows = [int(torch.nonzero((data.train_x == im).flatten(1).all(1))[0]) for im in flat]
    assert [int(data.train_y[r]) for r in rows] == labels.flatten().tolist()
    assert len(set(rows)) == 12
    assert torch.equal(images, real_initial_images(data.train_x, data.train_y, labels, seed=5))
    assert not torch.equal(images, real_initial_images(data.train_x, data.train_y, labels, 6))
    with pytest.raises(ConfigError, match="needs 11 training images of class 0; there are 10"):
        real_initial_images(data.train_x, data.train_y, torch.zeros(1, 11, dtype=torch.long), 0)


def test_a_run_starts_from_real_images_when_asked(tmp_path):
    data = toy_data()
    c = toy_config(DM, synth={"init_images": "real"}, optim={"iterations": 1, "meta_lr": 1e-12})
    b = distill(c, out=tmp_path / "r.safetensors", data=data).bundle
    labels = torch.arange(3).repeat_interleave(2).expand(1, 6)
    torch.testing.assert_close(b.images, real_initial_images(data.train_x, data.train_y, labels,
                                                             c.init.seed))
    err = one_line_error(run("visualize", tmp_path / "r.safetensors", "--change",
                             "-o", tmp_path / "v"), 2)
    assert "started from real images" in err
