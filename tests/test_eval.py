"""`ddcli.evaluate`: replay equality with the engine, batched == looped, the protocols."""

import json

import pytest
import torch

from ddcli import Bundle, DistillConfig, distill
from ddcli.core.params import init_params
from ddcli.core.seeds import derive_seed
from ddcli.core.metrics import accuracy
from ddcli.evaluate.initial_nets import STORED
from ddcli.evaluate.pool_eval import PoolEvalReport
from ddcli.core.unroll import unroll
from ddcli.errors import BundleFormatError, ConfigError
from ddcli.evaluate import (
    EvalConfig,
    evaluate_bundle,
    record_report,
    replay_accuracies,
    sidecar_path,
    train_accuracies,
    train_nets,
)
from ddcli.evaluate._many_nets import use_vmap
from ddcli.models import create_model

from tests._toy import toy_data


def cfg(**sections) -> DistillConfig:
    base = {
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
        "optim": {"iterations": 12, "meta_lr": 0.05, "decay_every": 100.0},
        "run": {"checkpoint_every": 0, "log_every": 0, "eval_every": 12, "eval_nets": 3,
                "device": "cpu"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return DistillConfig.from_dict(base)


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed") / "b.safetensors"
    return distill(cfg(), out=out, data=toy_data()), out


def test_replay_of_stored_init_equals_the_distillation_loop(fixed_run):
    result, path = fixed_run
    data = toy_data()
    report = evaluate_bundle(path, data=data, n_nets=3)
    stored = report.row("distilled", "stored init")
    # The same number the loop logged for the same weights, after a save/load round trip.
    assert stored.accuracies == result.evals[-1].accuracies
    metrics = (path.parent / "b.run" / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in metrics]
    assert logged[-1]["test_accs"] == stored.accuracies
    # ...and what an independent plain-autograd replay of the stored init gives.
    b = Bundle.load(path)
    model = create_model(**b.model)
    final = unroll(model, b.init_params, b.images, b.labels, b.lrs, create_graph=False).params
    assert stored.accuracies[0] == pytest.approx(accuracy(model, final, data.test_x, data.test_y),
                                                 abs=1.5 / len(data.test_y))
    assert stored.at == [0, 2, 4] and len(stored.curve) == 3
    random = report.row("distilled", "fresh random inits")
    assert random.n == 3 and report.primary is stored


def test_random_init_bundle_replays_the_loops_eval_nets(tmp_path):
    c = cfg(init={"mode": "random", "n_nets": 2, "sample_n_nets": 1, "seed": 7})
    result = distill(c, out=tmp_path / "r.safetensors", data=toy_data())
    report = evaluate_bundle(tmp_path / "r.safetensors", data=toy_data(), n_nets=3, seed=7)
    assert [r.group for r in report.rows] == ["fresh random inits"]
    assert report.primary.accuracies == result.evals[-1].accuracies


def test_per_step_curve_and_accuracy_climbs(fixed_run):
    _, path = fixed_run
    report = evaluate_bundle(path, data=toy_data(), n_nets=2, per_step=True)
    row = report.primary
    assert row.at == [0, 1, 2, 3, 4] and len(row.curve) == 5
    assert row.curve[-1][0] > row.curve[0][0]


def _toy_model_and_inits(name, n, data):
    kwargs = {"hidden": [16]} if name == "mlp" else {"width": 8, "depth": 1}
    model = create_model(name, in_channels=1, num_classes=3, image_size=8, **kwargs)
    return model, [init_params(model, "xavier", derive_seed(3, j)) for j in range(n)]


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize("per_net", [False, True])
def test_batched_replay_equals_looped(name, per_net):
    data = toy_data()
    model, inits = _toy_model_and_inits(name, 3, data)
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 6, 1, 8, 8) if per_net else (2, 6, 1, 8, 8)
    images = torch.randn(*shape, generator=g)
    labels = torch.arange(3).repeat(2).expand(2, 6)
    lrs = torch.full((4,), 0.1)
    args = (model, inits, images, labels, lrs, data.test_x, data.test_y)
    a = replay_accuracies(*args, at=[0, 1, 2, 3, 4], batched=True)
    b = replay_accuracies(*args, at=[0, 1, 2, 3, 4], batched=False)
    auto = replay_accuracies(*args, at=[0, 1, 2, 3, 4])
    assert a.shape == (5, 3)
    assert torch.equal(a, b) and torch.equal(a, auto)
    assert not torch.equal(a[0], a[-1])  # the replay did change the nets


def test_auto_batching_on_cpu_vmaps_only_the_replay_steps():
    model, _ = _toy_model_and_inits("mlp", 1, None)
    assert use_vmap(None, model, (1, 8, 8), "steps")
    assert not use_vmap(None, model, (1, 8, 8), "sgd")
    assert not use_vmap(None, model, (1, 8, 8), "inference")
    assert use_vmap(True, model, (1, 8, 8), "sgd")
    assert not use_vmap(False, model, (1, 8, 8), "steps")


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize("per_net", [False, True])
def test_batched_training_equals_torch_sgd(name, per_net):
    data = toy_data()
    model, inits = _toy_model_and_inits(name, 3, data)
    x, y = data.train_x[:20], data.train_y[:20]
    if per_net:
        x, y = torch.stack([x, x.flip(0), x.roll(3, 0)]), torch.stack([y, y.flip(0), y.roll(3, 0)])
    kw = dict(lr=0.05, epochs=4, seeds=[1, 2, 3], batch_size=8)  # 3 batches, the last short
    looped = [p for _, p in train_nets(model, inits, x, y, batched=False, **kw)]
    (group, batched), = list(train_nets(model, inits, x, y, batched=True, **kw))
    assert list(group) == [0, 1, 2]
    for j, one in enumerate(looped):
        for k, v in one.items():
            torch.testing.assert_close(batched[k][j], v[0], rtol=1e-4, atol=1e-5)
            assert not torch.allclose(v[0], inits[j][k])  # trained
    acc_b = train_accuracies(model, inits, x, y, data.test_x, data.test_y, batched=True, **kw)
    acc_l = train_accuracies(model, inits, x, y, data.test_x, data.test_y, batched=False, **kw)
    assert torch.equal(acc_b, acc_l)


def test_train_protocol_is_seeded_and_defaults_to_the_fields_rate(fixed_run):
    _, path = fixed_run
    kw = dict(data=toy_data(), protocol="train", n_nets=3, train_epochs=10)
    a, b = evaluate_bundle(path, **kw), evaluate_bundle(path, **kw)
    assert a.primary.accuracies == b.primary.accuracies
    assert a.primary.group == "fresh nets" and a.primary.n == 3
    # 0.01 (DC, DSA, DM), not the set's learned rates: those were learned for a replay
    assert Bundle.load(path).lrs.mean() > 0.05
    assert a.settings["train_lr"] == 0.01 and "field" in a.settings["lr_source"]
    assert any(n.startswith("lr 0.01:") for n in a.notes)
    assert a.settings["lr_decayed_at_epoch"] == 5 and a.settings["lr_decay"] == 0.1
    # The seed reaches the nets: one epoch leaves them far from converged, so different
    # inits and shuffles show in their accuracies (the same seed gave the same above).
    short = {**kw, "train_epochs": 1}
    c0, c1 = evaluate_bundle(path, **short), evaluate_bundle(path, **short, seed=1)
    assert c1.settings["seed"] == 1 and c0.primary.accuracies != c1.primary.accuracies
    d = evaluate_bundle(path, **kw, train_lr=0.5)
    assert d.settings["train_lr"] == 0.5 and d.settings["lr_source"] == "--train-lr"


def test_train_protocol_cross_architecture(fixed_run):
    _, path = fixed_run
    report = evaluate_bundle(path, data=toy_data(), protocol="train", model="convnet",
                             n_nets=2, train_epochs=3)
    assert report.model["name"] == "convnet" and report.primary.n == 2


def test_replay_refuses_another_model_and_pretrained_bundles(fixed_run, tmp_path):
    _, path = fixed_run
    with pytest.raises(ConfigError, match="--protocol train"):
        evaluate_bundle(path, data=toy_data(), model="convnet")
    b = Bundle.load(path)
    b.init_mode = "pretrained-random"  # the library routes it to pool evaluation itself
    report = evaluate_bundle(b, data=toy_data())
    assert isinstance(report, PoolEvalReport) and report.group == STORED
    assert any("not found" in note for note in report.notes)
    b.init_mode, b.init_params = "fixed", None
    with pytest.raises(BundleFormatError, match="init weights"):
        evaluate_bundle(b, data=toy_data())


def test_bad_settings_are_config_errors(fixed_run):
    _, path = fixed_run
    for bad in ({"n_nets": 0}, {"protocol": "sideways"}, {"train_lr": -1.0}, {"baselines": ["nope"]},
                {"batching": "fast"}):
        with pytest.raises(ConfigError):
            evaluate_bundle(path, data=toy_data(), **bad)


def test_record_writes_a_sidecar_and_keeps_one_entry_per_setting(fixed_run, tmp_path):
    _, path = fixed_run
    before = path.read_bytes()
    report = evaluate_bundle(path, data=toy_data(), n_nets=2)
    side = record_report(report)
    assert side == sidecar_path(path) == path.with_name("b.eval.json")
    record_report(report)
    record_report(evaluate_bundle(path, EvalConfig(n_nets=2, protocol="train", train_epochs=2),
                                  data=toy_data()))
    data = json.loads(side.read_text())
    assert data["format"] == "ddcli-eval"
    assert [e["protocol"] for e in data["evaluations"]] == ["replay", "train"]
    assert path.read_bytes() == before  # never written into the bundle


@pytest.mark.parametrize("decay", [0.1, 0.5])
def test_train_protocol_sgd_equals_torch_sgd_with_step_decay_at_half(decay):
    """The train protocol is torch.optim.SGD (momentum, weight decay) with the lr times
    ``lr_decay`` after half the epochs (DC's x0.1 by default), in the same batch order."""
    from ddcli.evaluate import train_nets

    from tests._toy import tiny_mlp, torch_sgd_reference

    g = torch.Generator().manual_seed(0)
    model = tiny_mlp()
    x, y = torch.randn(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    p0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    epochs, batch, seed = 4, 4, 7
    (_, got), = list(train_nets(model, [p0], x, y, lr=0.1, epochs=epochs, seeds=[seed],
                                batch_size=batch, lr_decay=decay, batched=False))
    ref = torch_sgd_reference(p0, x, y, lr=0.1, epochs=epochs, batch=batch, seed=seed,
                              decay=decay, decay_epoch=epochs // 2)
    for k, v in ref.named_parameters():
        torch.testing.assert_close(got[k][0], v.detach(), rtol=1e-6, atol=1e-7)


def test_evaluation_runs_with_freed_blocks_kept_in_the_heap(fixed_run, monkeypatch):
    """dd eval trains and tests nets inside retain_freed_memory, as distillation does
    (without it, glibc page-faults every net's activations back: docs/benchmarks.md)."""
    import contextlib

    from ddcli.evaluate import _evaluate as module

    entered = []

    @contextlib.contextmanager
    def spy(device):
        entered.append(device.type)
        yield

    monkeypatch.setattr(module, "retain_freed_memory", spy)
    report = module.evaluate_bundle(fixed_run[1], data=toy_data(), n_nets=2)
    assert entered == ["cpu"] and report.primary.n == 1
