"""The attack and adapt objectives end to end on toy data, and their evaluation report."""

import json

import pytest
import torch

from ddcli import Bundle, DistillConfig, distill
from ddcli.core.objectives import AttackObjective, RealLoss, make_objective
from ddcli.evaluate.pool_eval import evaluate_pool_bundle, random_real_images
from ddcli.pool.pretrain import PretrainRecipe, pretrain
from ddcli.evaluate.pool_report import pool_report_lines
from ddcli.data import RealData
from ddcli.errors import ConfigError

from tests._toy import toy_data

RECIPE = PretrainRecipe(real_epochs=3, lr=0.01, batch_size=32)


def flipped_toy() -> RealData:
    """Same shape and classes as the toy target, but each class's square is elsewhere."""
    d = toy_data(n_train=192, seed=1)
    return RealData("toy-flip", d.train_x.flip(-1), d.train_y, d.test_x.flip(-1), d.test_y,
                    d.classes, d.mean, d.std)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    for name, data in (("target", toy_data(n_train=192)), ("source", flipped_toy())):
        pretrain(data, out=root / name, n_nets=6, model="mlp", model_kwargs={"hidden": [16]},
                 recipe=RECIPE, nets_per_batch=6)
    return root


def cfg(pool, **objective) -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 48},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 1, "step_lr": 0.1},
        "optim": {"iterations": 30, "meta_lr": 0.05, "decay_every": 100.0},
        "init": {"mode": "pretrained-random", "pool": str(pool), "sample_n_nets": 2,
                 "pool_holdout": 0.34},
        "objective": objective,
        "run": {"checkpoint_every": 0},
    })


def test_attack_relabels_class_a_as_b_only():
    y = torch.tensor([0, 1, 2, 0, 3, 2, 0])
    assert AttackObjective(0, 2).relabel(y).tolist() == [2, 1, 2, 2, 3, 2, 2]
    assert y.tolist() == [0, 1, 2, 0, 3, 2, 0]  # the real labels are not modified
    c = DistillConfig.from_dict({"objective": {"kind": "attack", "attack_class": 3,
                                               "target_class": 1}})
    assert make_objective(c, 10).relabel(torch.arange(5)).tolist() == [0, 1, 2, 1, 4]
    assert make_objective(DistillConfig(), 10).relabel(torch.arange(3)).tolist() == [0, 1, 2]


def test_attack_run_feeds_relabelled_targets_to_the_outer_loss(pools, tmp_path, monkeypatch):
    # The real labels the engine hands the objective, and the targets the outer loss
    # itself is evaluated on (RealLoss.loss, at the unrolled weights), iteration by
    # iteration: the loss must see class 0 as 1 and every other class as it is.
    given, at_loss = [], []
    meta_gradient, loss = AttackObjective.meta_gradient, RealLoss.loss

    def recording_meta_gradient(self, nets, inits, learned, batch, **plan):
        given.append(batch.y.clone())
        at_loss.append([])
        return meta_gradient(self, nets, inits, learned, batch, **plan)

    def recording_loss(model, params, x, y):
        at_loss[-1].append(y.clone())
        return loss(model, params, x, y)

    monkeypatch.setattr(AttackObjective, "meta_gradient", recording_meta_gradient)
    monkeypatch.setattr(RealLoss, "loss", staticmethod(recording_loss))
    c = cfg(pools / "target", kind="attack", attack_class=0, target_class=1)
    c.optim.iterations = 2
    distill(c, out=tmp_path / "a.safetensors", data=toy_data(n_train=192))
    assert len(given) == 2
    for y, seen in zip(given, at_loss):
        assert (y == 0).any() and (y == 1).any()
        want = torch.where(y == 0, torch.ones_like(y), y)
        assert len(seen) >= 2  # one loss per sampled net (--sample-n-nets 2), at least
        for targets in seen:
            assert torch.equal(targets, want)


def test_attack_raises_the_success_rate_on_held_out_nets(pools, tmp_path):
    data = toy_data(n_train=192)
    result = distill(cfg(pools / "target", kind="attack", attack_class=0, target_class=1),
                     out=tmp_path / "a.safetensors", data=data)
    report = evaluate_pool_bundle(tmp_path / "a.safetensors", data=data)
    assert report.objective == "attack" and (report.attack_class, report.target_class) == (0, 1)
    held = result.bundle.extra["init"]["holdout_indices"]
    assert [n.pool_index for n in report.nets] == held and len(held) == 2
    before, _ = report.stat("before", "success_rate")
    after, _ = report.stat("after", "success_rate")
    assert before < 0.1 and after > 0.8
    assert report.stat("after", "other_accuracy")[0] > 0.8  # the other classes survive
    # The success rate is exactly the share of class-0 test images predicted as 1.
    net = report.nets[0]
    assert net.after.per_class[0] <= 1 - net.after.success_rate + 1e-9
    d = report.to_dict()
    assert d["summary"]["after_success_rate"]["mean"] == pytest.approx(after)


def test_adapt_improves_held_out_source_nets_on_the_target(pools, tmp_path):
    target = toy_data(n_train=192)
    result = distill(cfg(pools / "source", kind="adapt", source_dataset="toy-flip"),
                     out=tmp_path / "ad.safetensors", data=target)
    b = Bundle.load(tmp_path / "ad.safetensors")
    assert b.dataset == "toy" and b.extra["datasets"] == {"source": "toy-flip", "target": "toy"}
    assert b.extra["objective"] == {"kind": "adapt", "source_dataset": "toy-flip"}
    report = evaluate_pool_bundle(b, data=target)
    assert report.source_dataset == "toy-flip" and report.dataset == "toy"
    before, _ = report.stat("before", "accuracy")
    after, _ = report.stat("after", "accuracy")
    assert after > before + 0.15, (before, after)
    for net in report.nets:
        assert net.after.accuracy > net.before.accuracy
    assert result.bundle.extra["init"]["pool_dataset"] == "toy-flip"


def test_random_real_baseline_images_follow_the_labels():
    data = toy_data()
    labels = torch.tensor([[0, 1, 2], [0, 1, 2]])
    images = random_real_images(labels, data, seed=3)
    assert images.shape == (2, 3, 1, 8, 8)
    flat = images.reshape(6, 1, 8, 8)
    for img, c in zip(flat, labels.reshape(-1)):
        match = (data.train_x == img).flatten(1).all(1).nonzero().squeeze(1)
        assert match.numel() >= 1 and data.train_y[match[0]] == c
    assert torch.equal(images, random_real_images(labels, data, seed=3))
    assert not torch.equal(images, random_real_images(labels, data, seed=4))


def test_report_renders_text_and_json(pools, tmp_path, capsys):
    data = toy_data(n_train=192)
    c = cfg(pools / "target", kind="attack", attack_class=0, target_class=1)
    c.optim.iterations = 2
    b = distill(c, out=tmp_path / "a.safetensors", data=data).bundle
    report = evaluate_pool_bundle(b, data=data, n_nets=1)
    text = "\n".join(pool_report_lines(report))
    assert "attack success 0 -> 1" in text and "held-out pool nets (1)" in text
    assert "random real" in text and "class2" in text
    rec = json.loads(json.dumps(report.to_dict()))
    assert rec["objective"] == "attack" and rec["summary"]["n_nets"] == 1
    with pytest.raises(ConfigError, match="--n-nets"):
        evaluate_pool_bundle(b, data=data, n_nets=0)
