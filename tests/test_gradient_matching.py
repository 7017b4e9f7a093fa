"""Gradient matching (``--objective gradient``, DC and DSA): DC's layer distance, the loss
and its gradient against an independent computation and float64 finite differences,
Siamese DSA, the compiled and bf16 real side, the engine around it, resume, presets."""

import pytest
import torch
import torch.nn.functional as F

from ddcli import Bundle, distill, resume
from ddcli.core.augment import DSA
from ddcli.core.gradient_matching import (GradientMatching, gradient_matching_loss,
                                          layer_distance)
from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.objectives import CLASS_BATCHES, OuterBatch, list_objectives, make_objective
from ddcli.core.params import init_params
from ddcli.core.seeds import derive_seed
from ddcli.core.steps import StepFn
from ddcli.errors import ConfigError
from ddcli.layering import build_config
from ddcli.models import create_model

from tests._cli import one_line_error, run
from tests._toy import distill_until_ctrl_c, straight_and_resumed, toy_config, toy_data

GM = {"objective": {"kind": "gradient"}, "init": {"mode": "random"},
      "model": {"name": "convnet", "init_scheme": "default", "kwargs": {"width": 4, "depth": 2}},
      "synth": {"steps": 1, "epochs": 1, "images_per_class": 1, "step_lr": 0.01},
      "data": {"batch_size": 8},
      "optim": {"iterations": 6, "meta_optimizer": "sgd", "meta_lr": 0.1,
                "meta_momentum": 0.5, "decay_factor": 1.0}}


def _cosine_rows(a, b):
    """DC's distance written out row by row, as its code reads it."""
    total = 0.0
    for r, s in zip(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)):
        total = total + 1 - (r @ s) / (torch.sqrt(r @ r) * torch.sqrt(s @ s) + 1e-6)
    return total


def test_layer_distance_is_dcs_row_by_row_cosine_and_skips_vectors():
    g = torch.Generator().manual_seed(0)
    for shape in ((6, 3, 3, 3), (10, 32), (4, 2, 5)):
        a, b = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
        torch.testing.assert_close(layer_distance(a, b), _cosine_rows(a, b))
        # 0 for parallel rows and 2 per row for opposite ones, up to DC's 1e-6 in the
        # denominator; scale-free
        assert float(layer_distance(a, a)) == pytest.approx(0.0, abs=1e-5)
        assert float(layer_distance(a, 3 * a)) == pytest.approx(0.0, abs=1e-5)
        assert float(layer_distance(a, -a)) == pytest.approx(2 * shape[0], abs=1e-5)
    assert float(layer_distance(torch.ones(7), -torch.ones(7))) == 0.0  # biases, norms


def _set(classes=3, k=1, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(1, classes * k, 1, hw, hw, generator=g, dtype=torch.float64)
    real = [torch.randn(4 + c, 1, hw, hw, generator=g, dtype=torch.float64) for c in range(classes)]
    return images, real


def _model(classes=3):
    model = create_model("convnet", in_channels=1, num_classes=classes, image_size=8,
                         width=4, depth=2).double()
    inits = [{n: v.double() for n, v in init_params(model, "default", s).items()} for s in (1, 2)]
    return model, inits


def _grad(objective, model, inits, images, real, seed=3):
    nets = NetsMetaGradient(StepFn(model), mode="full", batch=False)
    out = objective.meta_gradient(nets, inits, {"images": images}, OuterBatch(seed, per_class=real))
    return out.loss, out.grads["images"]


def _convnet(p, x):
    """ConvNet-4x2's logits, layer by layer (not through the model)."""
    for i in (0, 4):
        w, b = p[f"features.{i}.weight"], p[f"features.{i}.bias"]
        x = F.conv2d(x, w, b, padding=1)
        x = F.group_norm(x, w.shape[0], p[f"features.{i + 1}.weight"], p[f"features.{i + 1}.bias"])
        x = F.avg_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p["classifier.1.weight"], p["classifier.1.bias"])


def _independent_loss(inits, leaf, real, k, augment, seed=3):
    total = 0
    for p0 in inits:
        p = {n: v.clone().requires_grad_(True) for n, v in p0.items()}
        for c in range(len(real)):
            r, s = real[c], leaf[0, c * k:(c + 1) * k]
            if augment:
                a = DSA(siamese=True)
                r, s = a(r, derive_seed(seed, "dsa", c)), a(s, derive_seed(seed, "dsa", c))
            target = lambda x: torch.full((x.shape[0],), c)  # noqa: E731
            gr = torch.autograd.grad(F.cross_entropy(_convnet(p, r), target(r)), list(p.values()))
            gs = torch.autograd.grad(F.cross_entropy(_convnet(p, s), target(s)), list(p.values()),
                                     create_graph=True)
            for a_, b_ in zip(gr, gs):
                if a_.dim() > 1:
                    total = total + _cosine_rows(a_.detach(), b_)
    return total


@pytest.mark.parametrize("augment", [False, True])
def test_loss_and_gradient_match_an_independent_computation(augment):
    classes, k = 3, 2
    images, real = _set(classes, k)
    model, inits = _model(classes)
    loss, grad = _grad(GradientMatching(classes, DSA() if augment else None), model, inits,
                       images, real)
    leaf = images.clone().requires_grad_(True)
    total = _independent_loss(inits, leaf, real, k, augment)
    total.backward()
    torch.testing.assert_close(loss, total.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("augment", [False, True])
def test_gradient_against_float64_finite_differences(augment):
    classes = 3
    images, real = _set(classes)
    model, inits = _model(classes)
    objective = GradientMatching(classes, DSA() if augment else None)
    _, grad = _grad(objective, model, inits, images, real)
    g = torch.Generator().manual_seed(5)
    direction = torch.randn(images.shape, generator=g, dtype=torch.float64)
    eps = 1e-6

    def loss(x):
        return _grad(objective, model, inits, x, real)[0]

    numeric = (loss(images + eps * direction) - loss(images - eps * direction)) / (2 * eps)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-6, atol=1e-8)


def test_the_real_side_is_a_constant_and_the_weights_are_untouched():
    classes = 3
    images, real = _set(classes)
    model, inits = _model(classes)
    before = {n: v.clone() for n, v in inits[0].items()}
    leaf = images.clone().requires_grad_(True)
    from ddcli.core.distribution import class_images
    loss = gradient_matching_loss(model, inits[0], class_images(leaf, classes), real)
    loss.backward()
    assert all(torch.equal(before[n], v) for n, v in inits[0].items())
    assert all(not v.requires_grad for v in inits[0].values())
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_bf16_and_compiled_real_sides_stay_close_to_fp32():
    """The opt-in speed levers: the real side's gradient under bf16 autocast or
    torch.compile changes the loss by rounding only (fused kernels, 8-bit mantissas)."""
    classes = 3
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, classes, 1, 8, 8, generator=g)
    real = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(classes)]
    model = create_model("convnet", in_channels=1, num_classes=classes, image_size=8,
                         width=8, depth=2)
    params = init_params(model, "default", 1)
    from ddcli.core.distribution import class_images

    def loss(**options):
        return gradient_matching_loss(model, params, class_images(images, classes), real,
                                      **options).item()

    base = loss()
    assert loss(compiled=True) == pytest.approx(base, rel=1e-3)
    assert loss(precision="bf16-outer") == pytest.approx(base, rel=3e-2)
    assert loss(nhwc=True) == pytest.approx(base, rel=1e-5)


def test_gradient_is_registered_and_checks_its_config():
    assert "gradient" in list_objectives()
    obj = make_objective(toy_config(GM, data={"augment": "dsa"}), 3)
    assert obj.needs == CLASS_BATCHES and not obj.learns_rates and not obj.unrolls
    assert obj.augment.siamese
    assert make_objective(toy_config(GM), 3).augment is None
    for layer, needle in (({"init": {"mode": "fixed"}}, "--init-mode random"),
                          ({"synth": {"learn_labels": True}}, "drop --learn-labels"),
                          ({"data": {"augment": "crop-flip"}}, "not crop-flip")):
        with pytest.raises(ConfigError, match=needle):
            make_objective(toy_config(GM, layer), 3)


def test_a_run_matches_gradients_better_and_records_its_objective(tmp_path):
    data = toy_data()
    c = toy_config(GM, optim={"iterations": 25})
    result = distill(c, out=tmp_path / "gm.safetensors", data=data)
    b = Bundle.load(tmp_path / "gm.safetensors")
    assert b.extra["objective"]["kind"] == "gradient"
    assert b.extra["objective"]["learned_rates"] is False
    assert b.images.shape == (1, 3, 1, 8, 8)
    start = distill(toy_config(GM, optim={"iterations": 1, "meta_lr": 1e-9}),
                    out=tmp_path / "start.safetensors", data=data).bundle.images
    model = create_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4, depth=2)
    real = [data.train_x[data.train_y == k] for k in range(3)]
    from ddcli.core.distribution import class_images

    def loss(images):  # under nets the run never drew, on every training image
        return sum(gradient_matching_loss(model, init_params(model, "default", 1000 + s),
                                          class_images(images, 3), real).item()
                   for s in range(6))

    assert loss(result.bundle.images) < 0.8 * loss(start)
    state = torch.load(tmp_path / "gm.run" / "checkpoint.pt", weights_only=True)
    assert "momentum_buffer" in state["optimizer"]["state"][0]  # SGD with momentum


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_resume_is_bit_exact(tmp_path, augment):
    data = toy_data()
    full, resumed = straight_and_resumed(toy_config(GM, data={"augment": augment}), tmp_path, data)
    assert resumed.iterations == 6
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert full.final_loss == resumed.final_loss


def test_presets_follow_dc_and_dsa():
    for name, dataset, augment in (("dc-mnist-ipc1", "mnist", "none"),
                                   ("dsa-cifar10-ipc1", "cifar10", "dsa")):
        cfg = build_config(preset=name)
        assert cfg.objective.kind == "gradient" and cfg.data.dataset == dataset
        assert (cfg.data.batch_size, cfg.data.augment) == (256, augment)
        assert (cfg.synth.images_per_class, cfg.synth.init_images) == (1, "real")
        assert (cfg.model_name(), cfg.model.kwargs, cfg.init.mode) == ("convnet", {}, "random")
        o = cfg.optim
        assert (o.meta_optimizer, o.meta_lr, o.meta_momentum) == ("sgd", 0.1, 0.5)
        assert (o.iterations, o.decay_factor) == (1000, 1.0)
    for name, dataset in (("dsa-cifar10-ipc10", "cifar10"), ("dsa-mnist-ipc10", "mnist")):
        cfg = build_config(preset=name)
        obj = make_objective(cfg, 10)
        assert (cfg.data.dataset, cfg.data.augment, cfg.synth.images_per_class) == (dataset, "dsa", 10)
        assert (obj.outer_loop, obj.inner_loop, obj.lr_net) == (10, 50, 0.01)
        assert cfg.optim.iterations == 1000 * obj.outer_loop  # DC's 1,000 nets


def test_cli_refuses_gradient_matching_with_a_fixed_init(tmp_path):
    err = one_line_error(run("distill", "mnist", "--objective", "gradient",
                             "-o", tmp_path / "x.safetensors"), 2)
    assert "--init-mode random" in err


# --- DC's loop: rounds per fresh network, training between them ------------------------------

def test_loops_default_to_dcs_by_images_per_class_and_are_checked():
    for ipc, loops in ((1, (1, 1)), (10, (10, 50)), (50, (50, 10))):
        obj = make_objective(toy_config(GM, synth={"images_per_class": ipc}), 3)
        assert (obj.outer_loop, obj.inner_loop) == loops
    obj = make_objective(toy_config(GM, synth={"images_per_class": 3},
                                    objective={"outer_loop": 4, "inner_loop": 2}), 3)
    assert (obj.outer_loop, obj.inner_loop) == (4, 2)
    assert obj.describe()["outer_loop"] == 4
    with pytest.raises(ConfigError, match="give --outer-loop and --inner-loop for 3"):
        make_objective(toy_config(GM, synth={"images_per_class": 3}), 3)
    with pytest.raises(ConfigError, match="--outer-loop must be at least 1"):
        make_objective(toy_config(GM, objective={"outer_loop": 0, "inner_loop": 1}), 3)
    with pytest.raises(ConfigError, match="--nproc 1"):
        make_objective(toy_config(GM, objective={"outer_loop": 2, "inner_loop": 1},
                                  run={"nproc": 2}), 3)


def test_later_rounds_match_on_the_network_trained_on_the_updated_set():
    """Round 0 on the fresh net; round 1 on it after inner_loop full-batch SGD epochs
    on the set as it is then (written out here: one batch holds the whole set); a new
    fresh net when the rounds are done, and the memory emptied."""
    classes, k, lr, epochs = 3, 2, 0.05, 3
    images, real = _set(classes, k)
    model, inits = _model(classes)
    inits = inits[:1]
    obj = GradientMatching(classes, outer_loop=2, inner_loop=epochs, lr_net=lr)
    nets = NetsMetaGradient(StepFn(model), mode="full", batch=False)
    memory = {}

    def step(it, x):
        out = obj.meta_gradient(nets, inits, {"images": x},
                                OuterBatch(7 + it, iteration=it, per_class=real, memory=memory))
        return out.loss

    first = step(0, images)
    assert memory["iteration"] == 0 and len(memory["nets"]) == 1
    updated = images - 0.5  # the images after an outer update
    second = step(1, updated)
    assert memory == {}  # the last round: nothing carried

    labels = torch.arange(classes).repeat_interleave(k)
    p = {n: v.clone() for n, v in inits[0].items()}
    for _ in range(epochs):
        leaves = {n: v.clone().requires_grad_(True) for n, v in p.items()}
        loss = F.cross_entropy(_convnet(leaves, updated[0]), labels)
        p = {n: (v - lr * g).detach() for (n, v), g in
             zip(leaves.items(), torch.autograd.grad(loss, list(leaves.values())))}
    want = _independent_loss([p], updated.clone().requires_grad_(True), real, k, False, seed=8)
    torch.testing.assert_close(second, want.detach(), rtol=1e-9, atol=1e-12)
    want_first = _independent_loss(inits, images.clone().requires_grad_(True), real, k, False,
                                   seed=7)
    torch.testing.assert_close(first, want_first.detach(), rtol=1e-9, atol=1e-12)
    third = step(2, updated)  # a new cycle: the fresh net again
    assert memory["iteration"] == 2
    torch.testing.assert_close(third, _independent_loss(
        inits, updated.clone().requires_grad_(True), real, k, False, seed=9).detach(),
        rtol=1e-9, atol=1e-12)


def test_a_lost_network_is_an_error_not_a_silent_fresh_start():
    classes = 3
    images, real = _set(classes)
    model, inits = _model(classes)
    obj = GradientMatching(classes, outer_loop=3, inner_loop=1)
    nets = NetsMetaGradient(StepFn(model), mode="full", batch=False)
    with pytest.raises(RuntimeError, match="lost its networks"):
        obj.meta_gradient(nets, inits, {"images": images},
                          OuterBatch(1, iteration=4, per_class=real, memory={}))


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_resume_in_the_middle_of_a_networks_rounds_is_bit_exact(tmp_path, augment):
    """outer_loop 2: the run stops after iteration 3 (0-based 0..2 done), so the resumed
    run's first iteration is a second round, on the network the checkpoint carries."""
    data = toy_data()
    c = toy_config(GM, data={"augment": augment}, synth={"images_per_class": 2},
                   objective={"outer_loop": 2, "inner_loop": 2}, run={"checkpoint_every": 1})
    full = distill(c, out=tmp_path / "full.safetensors", data=data)
    distill_until_ctrl_c(c, tmp_path / "part.safetensors", data, at=3)
    state = torch.load(tmp_path / "part.run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3
    memory = state["objective_state"]
    assert memory["iteration"] == 2 and len(memory["nets"]) == 1
    resumed = resume(tmp_path / "part.run", data=data)
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert full.final_loss == resumed.final_loss


def test_dry_run_says_gradient_matching_unrolls_nothing(fixture_root):
    err = one_line_error(run("distill", "mnist", "--preset", "dc-mnist-ipc1", "--dry-run",
                             "--data-root", fixture_root), 2)
    assert "unrolls nothing" in err


def test_dd_eval_trains_fresh_nets_on_a_gradient_matched_set(tmp_path):
    from ddcli.evaluate import evaluate_bundle

    data = toy_data()
    distill(toy_config(GM), out=tmp_path / "gm.safetensors", data=data)
    report = evaluate_bundle(tmp_path / "gm.safetensors", data=data, n_nets=1, train_epochs=2)
    assert report.protocol == "train"  # the rates were not learned: nothing to replay
