"""Several networks at once (torch.func.vmap) against one network at a time."""

import warnings

import pytest
import torch
from torch import nn

from ddcli import DistillConfig, distill
from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.params import init_params
from ddcli.core.rates import raw_from_lrs
from ddcli.core.steps import StepFn
from ddcli.models import create_model, list_models, model_info

from tests._toy import toy_data


def _problem(model, nets=3, steps=2, epochs=2, classes=3, seed=0, batch=6):
    c, hw = model.ddcli_spec["in_channels"], model.ddcli_spec["image_size"]
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    inits = [{k: v.to(d) for k, v in init_params(model, "xavier", seed + j).items()}
             for j in range(nets)]
    images = torch.randn(steps, classes, c, hw, hw, generator=g, dtype=d)
    labels = torch.arange(classes).expand(steps, classes).contiguous()
    raw = raw_from_lrs(0.05).to(d).repeat(steps * epochs)
    raw = raw + 0.1 * torch.randn(raw.shape, generator=g, dtype=d)
    real_x = torch.randn(batch, c, hw, hw, generator=g, dtype=d)
    real_y = torch.randint(0, classes, (batch,), generator=g)
    return model.to(d), inits, images, labels, raw, real_x, real_y


def _meta(model, inits, images, labels, raw, x, y, *, batch, mode="full", nets=None):
    """(loss, d/d images, d/d raw rates) summed over ``inits``, batched or looped."""
    nets = nets or NetsMetaGradient(StepFn(model), mode=mode, batch=batch)
    out = nets(inits, {"images": images, "raw_lrs": raw}, x, y, labels=labels)
    return out.loss, out.grads["images"], out.grads["raw_lrs"]


def looped_meta_gradient(*args, mode="full"):
    return _meta(*args, batch=False, mode=mode)


def batched_meta_gradient(*args, mode="full"):
    return _meta(*args, batch=True, mode=mode)


@pytest.mark.parametrize("name", list_models())
def test_batched_equals_loop_in_float64_for_every_model(name):
    # Its smallest size and small variant: small enough for float64 double backward.
    info = model_info(name)
    model = create_model(name, in_channels=1, num_classes=3, image_size=min(info.sizes),
                         **info.small)
    big = sum(p.numel() for p in model.parameters()) > 10**6  # one step, two nets
    args = _problem(model, nets=2 if big else 3, steps=1 if big else 2, epochs=1 if big else 2,
                    batch=2 if big else 6)
    ref = looped_meta_gradient(*args)
    got = batched_meta_gradient(*args)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert ref[1].abs().max() > 0 and ref[2].abs().max() > 0


@pytest.mark.parametrize("mode", ["stepwise", "recompute"])
def test_batched_memory_modes_agree_with_full(mode):
    model = create_model("lenet", in_channels=1, num_classes=3, image_size=28)
    args = _problem(model, nets=2, steps=2, epochs=2, batch=4)
    ref = batched_meta_gradient(*args, mode="full")
    got = batched_meta_gradient(*args, mode=mode)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-13)


class DataDependent(nn.Module):
    """Branches on a value: vmap can't trace it, so the engine must loop instead."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h * 2 if h.sum() > 0 else h


def test_unbatchable_model_falls_back_to_the_loop():
    model = DataDependent().double()
    g = torch.Generator().manual_seed(0)
    inits = [{k: torch.randn(v.shape, generator=g, dtype=torch.float64)
              for k, v in model.named_parameters()} for _ in range(2)]
    images = torch.randn(2, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(3).expand(2, 3)
    raw = raw_from_lrs(0.1).double().repeat(2)
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64, generator=g), torch.tensor([0, 1, 2, 0, 1])
    nets = NetsMetaGradient(StepFn(model), mode="full")
    args = (model, inits, images, labels, raw, x, y)
    with pytest.warns(RuntimeWarning, match="looping over them"):
        got = _meta(*args, batch=True, nets=nets)
    assert not nets.batched and nets.fallback_reason
    for a, b in zip(looped_meta_gradient(*args), got):
        torch.testing.assert_close(b, a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not every iteration
        _meta(*args, batch=True, nets=nets)


def test_engine_batched_and_looped_runs_agree(tmp_path):
    def run(batch: bool):
        cfg = DistillConfig.from_dict({
            "data": {"dataset": "toy", "batch_size": 32},
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
            "optim": {"iterations": 5, "meta_lr": 0.05},
            "init": {"mode": "random", "n_nets": 4, "sample_n_nets": 3},
            "run": {"device": "cpu", "checkpoint_every": 0, "batch_nets": batch},
        })
        return distill(cfg, out=tmp_path / f"{batch}.safetensors", data=toy_data()).bundle

    batched, looped = run(True), run(False)
    assert batched.summary["nets_batched"] and not looped.summary["nets_batched"]
    torch.testing.assert_close(batched.images, looped.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.raw_lrs, looped.raw_lrs, rtol=1e-4, atol=1e-6)
