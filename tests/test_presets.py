"""Presets parse into the intended configs, and flags override them."""

import pytest
from typer.testing import CliRunner

from ddcli.config import DistillConfig
from ddcli.cli import app
from ddcli.cli.distill import build_config
from ddcli.errors import ConfigError
from ddcli.presets import PRESETS, get_preset, list_presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = build_config(None, {}, base=get_preset(name))
    assert cfg.synth.steps == 10 and cfg.synth.epochs == 3 and cfg.synth.images_per_class == 1
    assert cfg.total_steps == 30


def test_paper_mnist_presets_match_the_paper():
    fixed = build_config(None, {}, base=get_preset("paper-mnist-fixed"))
    random = build_config(None, {}, base=get_preset("paper-mnist-random"))
    for cfg in (fixed, random):
        assert cfg.data.dataset == "mnist" and cfg.model.name == "lenet"
        assert cfg.model.init_scheme == "xavier" and cfg.synth.step_lr == 0.02
        assert (cfg.optim.meta_lr, cfg.optim.beta1, cfg.optim.beta2) == (0.01, 0.5, 0.999)
        assert (cfg.optim.decay_every, cfg.optim.decay_factor) == (40.0, 0.5)
        assert cfg.optim.real_epochs == 400.0 and cfg.optim.iterations is None
        assert cfg.data.batch_size == 1024 and cfg.data.augment == "none"
    assert fixed.init.mode == "fixed" and random.init.mode == "random"


def test_paper_cifar_presets_match_the_reference():
    for name, mode in (("paper-cifar10-fixed", "fixed"), ("paper-cifar10-random", "random")):
        cfg = build_config(None, {}, base=get_preset(name))
        assert cfg.data.dataset == "cifar10" and cfg.model.name == "alexcifarnet"
        assert cfg.synth.step_lr == 0.001 and cfg.data.augment == "crop-flip" and cfg.init.mode == mode


def test_fashion_presets_are_the_results_page_settings():
    lenet = {m: build_config(None, {}, base=get_preset(f"fashion-lenet-{m}"))
             for m in ("fixed", "random")}
    for mode, cfg in lenet.items():
        assert cfg.data.dataset == "fashion-mnist" and cfg.model.name == "lenet"
        assert cfg.model.init_scheme == "xavier" and cfg.data.batch_size == 1024
        assert (cfg.optim.real_epochs, cfg.optim.decay_every) == (50.0, 15.0)
        assert cfg.optim.iterations is None and cfg.init.mode == mode
    assert (lenet["random"].init.n_nets, lenet["random"].init.sample_n_nets) == (4, 4)
    conv = {m: build_config(None, {}, base=get_preset(f"fashion-convnet-{m}"))
            for m in ("fixed", "random")}
    for mode, cfg in conv.items():
        assert cfg.data.dataset == "fashion-mnist" and cfg.model.name == "convnet"
        assert cfg.model.init_scheme == "default" and cfg.data.batch_size == 256
        assert cfg.optim.decay_every == 0.9 and cfg.init.mode == mode
    assert conv["fixed"].optim.iterations == 420 and conv["random"].optim.iterations == 400
    assert conv["random"].init.sample_n_nets == 1


def test_quick_preset_is_short():
    cfg = build_config(None, {}, base=get_preset("quick-mnist"))
    assert cfg.data.dataset == "mnist" and cfg.optim.iterations is not None
    assert cfg.optim.iterations <= 1000 and cfg.init.mode == "fixed"


def test_flags_override_preset():
    cfg = build_config(None, {"meta_lr": 0.005, "init_mode": "random", "iterations": 7},
                       base=get_preset("paper-mnist-fixed"))
    assert cfg.optim.meta_lr == 0.005 and cfg.init.mode == "random" and cfg.optim.iterations == 7
    cfg = build_config(None, {"real_epochs": 2.0}, base=get_preset("quick-mnist"))
    assert cfg.optim.iterations is None and cfg.optim.real_epochs == 2.0


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("paper-imagenet")
    r = CliRunner().invoke(app, ["distill", "--preset", "paper-imagenet"])
    assert r.exit_code == 2 and "--list-presets" in r.stderr


def test_list_presets_cli():
    r = CliRunner().invoke(app, ["distill", "--list-presets"])
    assert r.exit_code == 0
    for name, _ in list_presets():
        assert name in r.stdout


def test_config_keys_renamed_since_earlier_versions_still_load():
    # Run folders and config files written before the learned rates and the meta step
    # size were named apart use distill_lr and lr.
    cfg = DistillConfig.from_dict({"synth": {"distill_lr": 0.1}, "optim": {"lr": 0.2}})
    assert cfg.synth.step_lr == 0.1 and cfg.optim.meta_lr == 0.2
    assert "distill_lr" not in cfg.to_dict()["synth"] and "lr" not in cfg.to_dict()["optim"]
