"""The model registry: shapes, torch.func compatibility, seeded init, refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ddcli.errors import ConfigError, ModelError, UnknownModelError
from ddcli.models import (
    MODEL_INIT_SCHEMES,
    check_functional,
    create_model,
    init_weights,
    list_models,
    model_info,
    register_model,
)

# Every registered model at every size it takes (the registry says which).
CASES = [(name, size) for name in list_models() for size in model_info(name).sizes]
NUM_CLASSES = 10


def _build(name: str, size: int, **kwargs) -> nn.Module:
    """The model's small variant (``ModelInfo.small``) unless ``kwargs`` say otherwise."""
    channels = 1 if size == 28 else 3  # MNIST-like or CIFAR-like
    options = {**model_info(name).small, **kwargs}
    return create_model(
        name, in_channels=channels, num_classes=NUM_CLASSES, image_size=size, **options
    )


def _seeded(model: nn.Module, seed: int, scheme: str = "xavier") -> nn.Module:
    return init_weights(model, scheme, generator=torch.Generator().manual_seed(seed))


def _images(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    spec = model.ddcli_spec
    shape = (batch, spec["in_channels"], spec["image_size"], spec["image_size"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


def _small_convnet() -> nn.Module:
    # Conv, GroupNorm and Linear layers at a size that inits in milliseconds.
    return create_model("convnet", in_channels=3, num_classes=4, image_size=32, width=8)


def test_every_model_module_registers_itself():
    # No list of names to keep in step: each module of ddcli.models but the registry's
    # own registers one or more models on import.
    import pkgutil

    import ddcli.models

    modules = {m.name for m in pkgutil.iter_modules(ddcli.models.__path__)} - {"_api", "_init", "_user"}
    assert len(list_models()) >= len(modules) >= 7
    assert {"alexnet", "vgg11", "resnet18", "convnet", "lenet"} <= set(list_models())


@pytest.mark.parametrize("name,size", CASES)
def test_output_shape_and_spec_rebuilds(name, size):
    channels = 1 if size == 28 else 3
    model = create_model(name, in_channels=channels, num_classes=NUM_CLASSES, image_size=size)
    model = _seeded(model, 0)  # at the model's defaults: the size a user gets
    assert model(_images(model, batch=3)).shape == (3, NUM_CLASSES)
    spec = json.loads(json.dumps(model.ddcli_spec))  # a bundle stores the spec as JSON
    rebuilt = create_model(**spec)
    assert rebuilt.ddcli_spec == model.ddcli_spec
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [
        (n, p.shape) for n, p in model.named_parameters()
    ]


@pytest.mark.parametrize("name,size", CASES)
def test_functional_call_matches_forward(name, size):
    model = _seeded(_build(name, size), 0)
    x = _images(model)
    params = dict(model.named_parameters())
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x), rtol=0, atol=0)
    check_functional(model)  # no buffers


@pytest.mark.parametrize("name,size", CASES)
def test_vmap_over_stacked_params(name, size):
    models = [_seeded(_build(name, size), seed) for seed in range(3)]
    params, _ = stack_module_state(models)  # each value: (3, *param.shape)
    base = models[0]

    def run(p, x):
        return functional_call(base, p, (x,))

    x = _images(base)
    shared = vmap(run, in_dims=(0, None))(params, x)  # (3, B, C)
    torch.testing.assert_close(shared, torch.stack([m(x) for m in models]), rtol=1e-4, atol=1e-5)

    xs = torch.stack([_images(base, seed=s) for s in range(3)])  # (3, B, C, H, W)
    own = vmap(run, in_dims=(0, 0))(params, xs)
    expected = torch.stack([m(xi) for m, xi in zip(models, xs)])
    torch.testing.assert_close(own, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,size", CASES)
def test_double_backward_reaches_the_input(name, size):
    # The meta-gradient differentiates a parameter gradient with respect to the data.
    model = _seeded(_build(name, size), 0)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    x = _images(model).requires_grad_()
    y = torch.arange(x.shape[0]) % NUM_CLASSES
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    grad_norm = sum(g.pow(2).sum() for g in grads)
    (x_grad,) = torch.autograd.grad(grad_norm, x)
    assert x_grad.shape == x.shape
    assert torch.isfinite(x_grad).all()
    assert x_grad.abs().sum() > 0


def test_lenet_mnist_parameter_count():
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    assert sum(p.numel() for p in model.parameters()) == 61_706


@pytest.mark.parametrize("scheme", MODEL_INIT_SCHEMES)
def test_init_is_seeded_and_leaves_global_rng_alone(scheme):
    # Building draws from the global RNG like any nn.Module; init_weights must not.
    first, again, other = (_small_convnet() for _ in range(3))
    rng_before = torch.get_rng_state()
    _seeded(first, 1, scheme)
    _seeded(again, 1, scheme)
    _seeded(other, 2, scheme)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for (name, a), b, c in zip(
        first.named_parameters(), again.parameters(), other.parameters()
    ):
        assert torch.equal(a, b), name
        if a.dim() >= 2:
            assert not torch.equal(a, c), name


@pytest.mark.parametrize("scheme", MODEL_INIT_SCHEMES)
def test_init_gives_same_weights_in_float64(scheme):
    single = _seeded(_small_convnet(), 3, scheme)
    double = _seeded(_small_convnet().double(), 3, scheme)
    for a, b in zip(single.parameters(), double.parameters()):
        assert b.dtype == torch.float64
        torch.testing.assert_close(b, a.double(), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", [s for s in MODEL_INIT_SCHEMES if s != "default"])
def test_init_sets_norm_affine_to_identity_and_biases_to_zero(scheme):
    model = _seeded(_small_convnet(), 0, scheme)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(1000, 500), nn.Conv2d(64, 128, kernel_size=3)],
    ids=["linear", "conv"],
)
def test_xavier_std_and_zero_bias(layer):
    init_weights(layer, generator=torch.Generator().manual_seed(0))  # "xavier" by default
    receptive = layer.weight[0, 0].numel()
    fan_out, fan_in = layer.weight.shape[0] * receptive, layer.weight.shape[1] * receptive
    expected = math.sqrt(2.0 / (fan_in + fan_out))
    # Sampling error of the std over >= 70k draws is well under 1%.
    assert layer.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(layer.weight.mean().item()) < 0.02 * expected
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_kaiming_orthogonal_and_normal_scales():
    layer = nn.Linear(1000, 400)
    g = torch.Generator().manual_seed(0)
    init_weights(layer, "kaiming", generator=g)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0 / 1000), rel=0.02)
    init_weights(layer, "kaiming-out", generator=g)
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0 / 400), rel=0.02)
    init_weights(layer, "normal", generator=g)
    assert layer.weight.std().item() == pytest.approx(0.02, rel=0.02)
    init_weights(layer, "orthogonal", generator=g)
    gram = layer.weight @ layer.weight.T  # (400, 400): rows are orthonormal
    torch.testing.assert_close(gram, torch.eye(400), rtol=0, atol=1e-4)


def test_check_functional_refuses_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(ModelError, match="running statistics") as err:
        check_functional(model)
    message = str(err.value)
    assert "\n" not in message
    assert "running_mean" in message and "convnet" in message


def test_unknown_model():
    with pytest.raises(UnknownModelError) as err:
        create_model("resnet", in_channels=3, num_classes=10, image_size=32)
    message = str(err.value)
    assert "\n" not in message and "'resnet'" in message
    assert all(name in message for name in list_models())


def test_unknown_init_scheme():
    with pytest.raises(ConfigError, match="xavier-uniform"):
        init_weights(nn.Linear(2, 2), "he", generator=torch.Generator())


@pytest.mark.parametrize(
    "name,size,needs",
    [("alexcifarnet", 28, "32 px"), ("lenet", 64, "28 or 32 px"), ("convnet", 30, "28 px"),
     ("alexnet", 30, "divisible by 8"), ("vgg11", 64, "28 or 32 px"),
     ("resnet18", 30, "28 or 32 px")],
)
def test_input_size_the_model_cannot_take(name, size, needs):
    with pytest.raises(ModelError, match=needs) as err:
        create_model(name, in_channels=3, num_classes=10, image_size=size)
    assert "\n" not in str(err.value)


def test_wrong_input_shape_at_call_time():
    model = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    with pytest.raises(ModelError, match=r"\(B, 1, 28, 28\)"):
        model(torch.zeros(2, 3, 32, 32))


def test_bad_sizes_and_options():
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("mlp", in_channels=0, num_classes=10, image_size=28)
    with pytest.raises(ConfigError, match="'width'"):
        create_model("lenet", in_channels=1, num_classes=10, image_size=28, width=64)
    with pytest.raises(ConfigError, match="hidden"):
        create_model("mlp", in_channels=1, num_classes=10, image_size=28, hidden=300)


def test_model_options():
    mlp = create_model("mlp", in_channels=1, num_classes=2, image_size=8, hidden=[16])
    assert [p.shape for p in mlp.parameters()] == [(16, 64), (16,), (2, 16), (2,)]
    deep = create_model("convnet", in_channels=3, num_classes=5, image_size=32, width=16, depth=4)
    assert deep.ddcli_spec["depth"] == 4
    assert deep(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_register_model_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet")(lambda **kwargs: nn.Identity())
