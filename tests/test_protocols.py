"""The named evaluation protocols (dc, dsa, mtt): every knob, DC's MNIST augmentation
against a reference written here, the fresh optimiser at the decay, the chance warning."""

import os
import subprocess
import sys
from pathlib import Path
import json
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import rotate as scipy_rotate

from ddcli.core.augment import parse_augment
from ddcli.core.dc_augment import DCAugment
from ddcli.errors import ConfigError
from ddcli.evaluate import EvalConfig, evaluate_bundle, train_nets
from ddcli.evaluate.protocols import resolve
from tests._cli import one_line_error, run
from tests.test_eval_cli import mnist_bundle  # noqa: F401  (fixture)
from tests._toy import tiny_mlp, toy_data, torch_sgd_reference


# --- the protocols' knobs ------------------------------------------------------------

@pytest.mark.parametrize("name, dataset, epochs, decay, augment", [
    ("dc", "mnist", 301, 152, "dc"),  # DC augments MNIST ...
    ("dc", "fashion-mnist", 301, 152, "none"),  # ... and nothing else
    ("dc", "cifar10", 301, 152, "none"),
    ("dsa", "mnist", 1001, 502, "dsa"),
    ("dsa", "cifar10", 1001, 502, "dsa"),
    ("mtt", "cifar10", 1001, 502, "dsa"),
])
def test_named_protocols_set_every_knob(name, dataset, epochs, decay, augment):
    r = resolve(EvalConfig(protocol=name), dataset, torch.tensor([0.03, 0.05]))
    assert (r.train_epochs, r.decay_epoch, r.augment) == (epochs, decay, augment)
    assert r.model == "convnet" and r.init_scheme == "default" and r.reset_momentum
    assert r.departures == ()
    cfg = EvalConfig(protocol=name)
    assert (cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.lr_decay) == (256, 0.9, 5e-4, 0.1)
    if name == "mtt":  # MTT evaluates at the set's learned rate
        assert r.train_lr == pytest.approx(0.04) and "learned" in r.lr_source
    else:
        assert r.train_lr == 0.01


def test_explicit_settings_win_and_are_reported_as_departures():
    cfg = EvalConfig(protocol="dc", train_epochs=3, augment="none", train_lr=0.1)
    r = resolve(cfg, "mnist", None)
    assert (r.train_epochs, r.augment, r.train_lr) == (3, "none", 0.1)
    assert r.decay_epoch == 3  # (3 - 1) // 2 + 2, capped at the run's length
    text = "; ".join(r.departures)
    assert "train-epochs 3 (the protocol's: 301)" in text and "augment none" in text
    assert "train-lr 0.1" in text
    assert resolve(EvalConfig(protocol="mtt"), "cifar10", None).train_lr == 0.01


def test_plain_train_protocol_keeps_its_defaults():
    r = resolve(EvalConfig(protocol="train"), "mnist", torch.tensor([0.2]))
    assert (r.train_epochs, r.decay_epoch, r.augment, r.train_lr) == (300, 150, "none", 0.01)
    assert r.model is None and not r.reset_momentum


def test_unknown_protocol_and_augment_are_usage_errors():
    with pytest.raises(ConfigError, match="one of replay, train, dc, dsa, mtt"):
        EvalConfig(protocol="dm").validate()
    with pytest.raises(ConfigError, match="unknown DC ops"):
        EvalConfig(augment="dc:crop_twirl").validate()
    assert parse_augment("dc:crop_rotate").ops == ("crop", "rotate")


# --- DC's augmentation against a reference written as DC's per-image loop ----------

def dc_reference(images, draws, aug: DCAugment):
    """DC's ``augment``, image by image, taking its random numbers from ``draws``."""
    images = images.clone()
    shape = images.shape
    mean = [float(torch.mean(images[:, c])) for c in range(shape[1])]
    for i in range(shape[0]):
        op = aug.ops[draws.op[i]]
        if op == "crop":
            im_ = torch.zeros(shape[1], shape[2] + aug.crop * 2, shape[3] + aug.crop * 2)
            for c in range(shape[1]):
                im_[c] = mean[c]
            im_[:, aug.crop:aug.crop + shape[2], aug.crop:aug.crop + shape[3]] = images[i]
            r, c = draws.crop[i]
            images[i] = im_[:, r:r + shape[2], c:c + shape[3]]
        elif op == "scale":
            h, w = (int(v) for v in draws.scale[i])
            tmp = F.interpolate(images[i:i + 1], [h, w])[0]
            mhw = max(h, w, shape[2], shape[3])
            im_ = torch.zeros(shape[1], mhw, mhw)
            r, c = int((mhw - h) / 2), int((mhw - w) / 2)
            im_[:, r:r + h, c:c + w] = tmp
            r, c = int((mhw - shape[2]) / 2), int((mhw - shape[3]) / 2)
            images[i] = im_[:, r:r + shape[2], c:c + shape[3]]
        else:
            im_ = scipy_rotate(images[i].numpy(), angle=int(draws.angle[i]), axes=(-2, -1),
                               cval=np.mean(mean))
            r, c = int((im_.shape[-2] - shape[-2]) / 2), int((im_.shape[-1] - shape[-1]) / 2)
            images[i] = torch.tensor(im_[:, r:r + shape[-2], c:c + shape[-1]], dtype=torch.float)
    return images


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_dc_augmentation_equals_dcs_per_image_loop(channels, size):
    aug = DCAugment()
    x = torch.randn(60, channels, size, size, generator=torch.Generator().manual_seed(1))
    for seed in range(4):
        draws = aug.draw(x.shape[0], size, seed)
        assert set(np.unique(draws.op)) == {0, 1, 2}  # every op is exercised
        torch.testing.assert_close(aug(x, seed), dc_reference(x, draws, aug), rtol=0, atol=1e-6)


def test_dc_augmentation_draws_dcs_ranges_and_is_seeded():
    aug = DCAugment()
    d = aug.draw(20000, 28, 0)
    assert np.bincount(d.op).min() > 6000  # one of three ops per image, uniformly
    assert d.crop.min() == 0 and d.crop.max() == 7  # np.random.permutation(8)[0]
    assert d.scale.min() == int(0.8 * 28) and d.scale.max() == 33  # int(U(0.8, 1.2) * 28)
    assert d.angle.min() == -45 and d.angle.max() == 44  # np.random.randint(-45, 45)
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(aug(x, 3), aug(x, 3)) and not torch.equal(aug(x, 3), aug(x, 4))
    stacked = torch.stack([x, x])  # (N, B, ...): images drawn apart, shape kept
    assert aug(stacked, 3).shape == stacked.shape


# --- a fresh optimiser at the decay, as DC's code makes one ---------------------------

def test_reset_momentum_equals_a_new_torch_sgd_at_the_decay_epoch():
    g = torch.Generator().manual_seed(0)
    model = tiny_mlp()
    x, y = torch.randn(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    p0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    epochs, decay_epoch, batch, seed = 5, 3, 4, 7
    ref = torch_sgd_reference(p0, x, y, lr=0.1, epochs=epochs, batch=batch, seed=seed,
                              decay=0.1, decay_epoch=decay_epoch, fresh_optimizer=True)
    for batched in (False, True):
        (_, got), = list(train_nets(model, [p0], x, y, lr=0.1, epochs=epochs, seeds=[seed],
                                    batch_size=batch, decay_epoch=decay_epoch,
                                    reset_momentum=True, batched=batched))
        for k, v in ref.named_parameters():
            torch.testing.assert_close(got[k][0], v.detach(), rtol=1e-5, atol=1e-6)
    # and it is a different run from one that keeps the momentum
    (_, kept), = list(train_nets(model, [p0], x, y, lr=0.1, epochs=epochs, seeds=[seed],
                                 batch_size=batch, decay_epoch=decay_epoch, batched=False))
    assert not torch.allclose(kept["1.weight"], got["1.weight"])


# --- the evaluations themselves ----------------------------------------------------

def _toy_bundle(tmp_path):
    from ddcli import Bundle
    from ddcli.core.rates import raw_from_lrs
    from ddcli.models import create_model

    data = toy_data(hw=8)
    model = create_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4, depth=2)
    x = torch.stack([data.train_x[data.train_y == c][:2] for c in range(3)], 1)  # (2, 3, ...)
    b = Bundle(images=x.contiguous(), labels=torch.arange(3).expand(2, 3).contiguous(),
               raw_lrs=raw_from_lrs(torch.full((2,), 0.05)), dataset="toy",
               classes=data.classes, mean=data.mean, std=data.std, model=model.ddcli_spec,
               epochs=1)
    return data, b.save(tmp_path / "toy.safetensors")


def test_a_named_protocol_runs_its_settings_end_to_end(tmp_path):
    data, path = _toy_bundle(tmp_path)
    rep = evaluate_bundle(path, data=data, protocol="dsa", train_epochs=4, n_nets=2,
                          baselines=["random-real"])
    s = rep.settings
    assert rep.protocol == "dsa" and rep.model["name"] == "convnet"
    assert rep.model.get("width", 128) == 128  # the protocol's ConvNet, not the set's width-4 one
    assert (s["augment"], s["init_scheme"], s["reset_momentum"]) == ("dsa", "default", True)
    assert s["train_epochs"] == 4 and s["lr_decayed_at_epoch"] == 3 and s["train_lr"] == 0.01
    assert any("departs from the dsa protocol: train-epochs 4" in n for n in rep.notes)
    assert [r.name for r in rep.rows] == ["distilled", "random-real"]
    mtt = evaluate_bundle(path, data=data, protocol="mtt", train_epochs=2, n_nets=1)
    assert mtt.settings["train_lr"] == pytest.approx(0.05)  # the set's learned rate


def test_an_evaluation_at_chance_says_so_with_its_rate(tmp_path):
    data, path = _toy_bundle(tmp_path)  # the toy test set is balanced
    # a rate far too large: the nets diverge and answer one class
    rep = evaluate_bundle(path, data=data, protocol="train", train_epochs=3, n_nets=2,
                          train_lr=1e10)
    assert rep.primary.accuracies == [1 / 3, 1 / 3]
    assert len(rep.warnings) == 1
    w = rep.warnings[0]
    assert "distilled" in w and "within 2 points of chance (33 %) at lr 1e+10" in w
    assert rep.to_dict()["warnings"] == rep.warnings
    fine = evaluate_bundle(path, data=data, protocol="train", train_epochs=30, n_nets=1,
                           train_lr=0.05)
    assert fine.primary.mean > 0.4 and fine.warnings == []


def test_protocol_dc_on_the_cli(mnist_bundle, fixture_root):  # noqa: F811
    r = run("eval", mnist_bundle, "--data-root", fixture_root, "--protocol", "dc",
            "--n-nets", "1", "--train-epochs", "2", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    s = rec["settings"]
    assert rec["protocol"] == "dc" and rec["model"]["name"] == "convnet"
    assert (s["augment"], s["train_lr"], s["reset_momentum"]) == ("dc", 0.01, True)
    assert any("train-epochs 2 (the protocol's: 301)" in n for n in rec["notes"])


def test_chance_warning_on_the_cli_is_one_line(tmp_path, fixture_root):
    # a rate far too large: the net diverges and answers one class, 10 % of the balanced
    # fixture test set
    some = tmp_path / "set.pt"
    torch.save({"images": torch.randn(10, 1, 28, 28), "labels": torch.arange(10)}, some)
    r = run("eval", some, "--dataset", "mnist", "--data-root", fixture_root, "--model", "mlp",
            "--n-nets", "1", "--train-epochs", "2", "--train-lr", "1e10")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "of chance" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: distilled"), r.stderr
    assert "10.00 % is within 2 points of chance (10 %) at lr 1e+10 (--train-lr)" in lines[0]
    assert "Traceback" not in r.output


def test_eval_config_round_trips_with_the_new_fields():
    cfg = EvalConfig(protocol="dsa", decay_epoch=5, reset_momentum=True, augment="dc:crop")
    assert EvalConfig(**{**cfg.to_dict(), "baselines": ()}) == dataclasses.replace(cfg)


# --- opt-in bf16 autocast for the train protocols ------------------------------------

def test_bf16_precision_trains_and_tests_under_autocast(tmp_path, monkeypatch):
    import ddcli.evaluate._evaluate as ev

    data, path = _toy_bundle(tmp_path)
    seen = []
    real_run_train = ev.run_train

    def spy(job, lr):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        conv = torch.nn.Conv2d(1, 2, 3)
        seen.append(conv(torch.zeros(1, 1, 5, 5)).dtype)  # what the nets' convolutions give
        return real_run_train(job, lr)

    monkeypatch.setattr(ev, "run_train", spy)
    kw = dict(data=data, protocol="dsa", train_epochs=20, n_nets=2, train_lr=0.05)
    bf16 = evaluate_bundle(path, precision="bf16", **kw)
    assert seen == [(True, torch.bfloat16), torch.bfloat16]
    assert bf16.settings["precision"] == "bf16"
    assert any("bf16 autocast" in n and "dsa protocol's code runs fp32" in n for n in bf16.notes)
    seen.clear()
    fp32 = evaluate_bundle(path, **kw)
    assert seen[0][0] is False and seen[1] == torch.float32
    assert fp32.settings["precision"] == "fp32" and not any("autocast" in n for n in fp32.notes)
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the evaluation
    # the same nets and batches: bf16 rounding moves the weights, not what they learn
    assert abs(bf16.primary.mean - fp32.primary.mean) <= 0.2
    assert min(bf16.primary.accuracies) > 0.5  # three classes: chance is a third


def test_bf16_precision_is_refused_for_replays_in_one_line(tmp_path, mnist_bundle,  # noqa: F811
                                                           fixture_root):
    data, path = _toy_bundle(tmp_path)
    with pytest.raises(ConfigError, match="--precision bf16 is for the train protocols"):
        evaluate_bundle(path, data=data, precision="bf16")  # a bundle's default: replay
    with pytest.raises(ConfigError, match="--precision must be fp32 or bf16"):
        EvalConfig(precision="fp16").validate()
    r = run("eval", mnist_bundle, "--data-root", fixture_root, "--precision", "bf16")
    assert one_line_error(r, 2) == ("error: --precision bf16 is for the train protocols (train, "
                                 "dc, dsa, mtt); a replay runs the set's own steps in fp32")
    r = run("eval", mnist_bundle, "--data-root", fixture_root, "--protocol", "train",
            "--precision", "fp16")
    assert one_line_error(r, 2).startswith("error: --precision must be fp32")


_BOUNDED_SCRIPT = r"""
import os, sys, torch
from ddcli.core.params import init_params
from ddcli.evaluate._evaluate import precision_context
from ddcli.evaluate._many_nets import train_nets
from ddcli.models import create_model

model = create_model("convnet", in_channels=3, num_classes=10, image_size=32, width=32)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(100, 3, 32, 32, generator=g), torch.arange(100) % 10
page = os.sysconf("SC_PAGE_SIZE")
rss = []

def progress(done, total):
    rss.append(int(open("/proc/self/statm").read().split()[1]) * page)

with precision_context("bf16", torch.device("cpu")):
    for _ in train_nets(model, [init_params(model, "default", 0)], x, y, lr=0.01, epochs=60,
                        seeds=[0], batched=False, progress=progress):
        pass
print(rss[10], rss[-1])
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
def test_bf16_training_memory_stays_flat_over_epochs():
    """Autocast's cast cache kept every step's bf16 weight copies until the evaluation
    ended, and the heap grew behind them: 20 MB per step on CIFAR-10 shapes, an
    evaluation OOM-killed at 24 GB. Here, steps 11 to 60 grew RSS by 133 MB with the
    cache and by nothing without it."""
    done = subprocess.run([sys.executable, "-c", _BOUNDED_SCRIPT], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    early, late = map(int, done.stdout.split())
    assert late - early < 60 * 2**20, (early, late)


def test_bf16_training_without_the_cast_cache_gives_the_same_weights_bit_for_bit():
    from ddcli.core.params import init_params
    from ddcli.evaluate._evaluate import precision_context
    from ddcli.evaluate._many_nets import train_nets
    from ddcli.models import create_model

    model = create_model("convnet", in_channels=3, num_classes=10, image_size=16, width=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 16, 16, generator=g), torch.arange(40) % 10
    kw = dict(lr=0.01, epochs=4, seeds=[0], batched=False, batch_size=16)
    got = {}
    for name, ctx in (("ours", precision_context("bf16", torch.device("cpu"))),
                      ("cached", torch.autocast("cpu", dtype=torch.bfloat16))):
        with ctx:
            for _, p in train_nets(model, [init_params(model, "default", 0)], x, y, **kw):
                got[name] = p
    assert got["ours"].keys() == got["cached"].keys()
    assert all(torch.equal(got["ours"][k], got["cached"][k]) for k in got["ours"])
