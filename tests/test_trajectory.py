"""Trajectory matching (``--objective trajectory``, MTT) and the expert trajectories it
starts from (``dd pretrain --trajectories``): the meta-gradient against float64 central
differences in every memory mode, the N = 0 identity, the pool format, resume, errors."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from ddcli import Bundle, distill
from ddcli.layering import build_config
from ddcli.core.meta_gradient import NetsMetaGradient
from ddcli.core.objectives import EXPERT_SEGMENT, OuterBatch, make_objective
from ddcli.core.params import init_params
from ddcli.core.rates import lrs_from_raw, raw_from_lrs
from ddcli.core.schedules import CyclicSchedule
from ddcli.core.steps import StepFn
from ddcli.core.trajectory import TrajectoryMatching
from ddcli.core.unroll import unroll
from ddcli.engine.inits import ExpertSegments, make_init_source
from ddcli.errors import ConfigError, PoolError
from ddcli.evaluate import evaluate_bundle, is_pool_bundle
from ddcli.models import create_model
from ddcli.pool.folder import MANIFEST, Pool, trajectory_file
from ddcli.pool.pretrain import PretrainRecipe, pretrain
from ddcli.core.seeds import derive_seed

from tests._cli import one_line_error, run
from tests._toy import Tiny as _TinyNet, toy_config, toy_data, straight_and_resumed

D = torch.float64
MLP = {"name": "mlp", "kwargs": {"hidden": [16]}}


def Tiny(classes=3):
    """The shared tiny net on 2-channel 4 x 4 images."""
    return _TinyNet(classes, c=2)


def _problem(nets=1, steps=2, passes=2, classes=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = Tiny(classes).to(D)

    def weights(scale):
        return {n: torch.randn(p.shape, generator=g, dtype=D) * scale
                for n, p in model.named_parameters()}

    starts = [weights(0.5) for _ in range(nets)]
    targets = [{n: v + w for (n, v), w in zip(s.items(), weights(0.1).values())} for s in starts]
    n = classes * k
    images = torch.randn(steps, n, 2, 4, 4, generator=g, dtype=D)
    hard = torch.arange(classes).repeat_interleave(k).expand(steps, n).contiguous()
    soft = torch.nn.functional.one_hot(hard, classes).to(D) + 0.3 * torch.rand(
        steps, n, classes, generator=g, dtype=D)
    raw = raw_from_lrs(torch.full((steps * passes,), 0.3, dtype=D)) + 0.1 * torch.randn(
        steps * passes, generator=g, dtype=D)
    return model, starts, targets, {"images": images, "raw_lrs": raw, "soft_labels": soft}, hard


def _reference_loss(model, starts, targets, learned, hard, schedule) -> float:
    """sum over experts of ||theta_N - target||^2 / ||start - target||^2, theta_N replayed
    step by step without a graph and the distances written out here."""
    total = 0.0
    for start, target in zip(starts, targets):
        final = unroll(StepFn(model), start, learned["images"], learned.get("soft_labels", hard),
                       lrs_from_raw(learned["raw_lrs"]), create_graph=False,
                       schedule=schedule).params
        num = sum(((final[k] - target[k]) ** 2).sum().item() for k in final)
        den = sum(((start[k] - target[k]) ** 2).sum().item() for k in start)
        total += num / den
    return total


def _meta_gradient(objective, model, starts, targets, learned, hard, schedule, mode,
                   batch=False, window=None):
    nets = NetsMetaGradient(StepFn(model), mode=mode, batch=batch)
    return objective.meta_gradient(nets, starts, learned, OuterBatch(0, targets=targets),
                                   labels=hard, schedule=schedule, window=window)


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_meta_gradient_matches_finite_differences(mode):
    """Images, every per-step rate and the soft labels, against float64 central
    differences of the replayed normalised distance, over two experts."""
    model, starts, targets, learned, hard = _problem(nets=2)
    schedule = CyclicSchedule(2, 4)
    got = _meta_gradient(TrajectoryMatching(1, 0, "per-step"), model, starts, targets,
                         learned, hard, schedule, mode)
    want = _reference_loss(model, starts, targets, learned, hard, schedule)
    assert got.loss.item() == pytest.approx(want, rel=1e-12)
    gen, eps = torch.Generator().manual_seed(1), 1e-6
    for name, tensor in learned.items():
        for i in torch.randint(0, tensor.numel(), (6,), generator=gen).tolist():
            e = torch.zeros_like(tensor).view(-1)
            e[i] = eps
            e = e.view_as(tensor)
            hi, lo = (_reference_loss(model, starts, targets, {**learned, name: tensor + s * e},
                                      hard, schedule) for s in (1, -1))
            assert got.grads[name].view(-1)[i].item() == pytest.approx(
                (hi - lo) / (2 * eps), rel=1e-5, abs=1e-9), (name, i, mode)


@pytest.mark.parametrize("mode", ["full", "recompute"])
def test_one_rate_gets_the_gradient_of_a_shared_rate(mode):
    """MTT's single rate: every raw rate's gradient is d/de L(raw + e), the derivative
    along all of them at once."""
    model, starts, targets, learned, hard = _problem()
    schedule = CyclicSchedule(2, 4)
    learned["raw_lrs"] = torch.full_like(learned["raw_lrs"], -1.0)
    got = _meta_gradient(TrajectoryMatching(1, 0, "one"), model, starts, targets, learned,
                         hard, schedule, mode)
    eps = 1e-6
    hi, lo = (_reference_loss(model, starts, targets,
                              {**learned, "raw_lrs": learned["raw_lrs"] + s * eps}, hard,
                              schedule) for s in (1, -1))
    g = got.grads["raw_lrs"]
    assert torch.equal(g, g[:1].expand_as(g))
    assert g[0].item() == pytest.approx((hi - lo) / (2 * eps), rel=1e-5)


def test_batched_experts_match_one_at_a_time():
    model, starts, targets, learned, hard = _problem(nets=3)
    schedule = CyclicSchedule(2, 4)
    objective = TrajectoryMatching(1, 0, "per-step")
    looped = _meta_gradient(objective, model, starts, targets, learned, hard, schedule, "full")
    batched = _meta_gradient(objective, model, starts, targets, learned, hard, schedule, "full",
                             batch=True)
    assert batched.loss.item() == pytest.approx(looped.loss.item(), rel=1e-12)
    for k, g in looped.grads.items():
        torch.testing.assert_close(batched.grads[k], g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["full", "stepwise", "recompute"])
def test_no_synthetic_steps_give_exactly_the_experts_own_segment(mode):
    """N = 0 leaves theta at theta*_t: the loss is ||theta*_t - theta*_{t+M}||^2 over
    itself, 1 for each expert, exactly; nothing was unrolled, so no gradient."""
    model, starts, targets, learned, hard = _problem(nets=2)
    got = _meta_gradient(TrajectoryMatching(1, 0), model, starts, targets, learned, hard,
                         CyclicSchedule(2, 4), mode, window=(0, 0))
    assert got.loss.item() == 2.0
    assert all(not g.any() for g in got.grads.values())


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Three MLP experts on the toy data, their weights kept after each of 3 epochs."""
    path = tmp_path_factory.mktemp("experts") / "toy"
    pretrain(toy_data(), out=path, n_nets=3, model="mlp", model_kwargs={"hidden": [16]},
             recipe=PretrainRecipe(real_epochs=3, lr=0.01, batch_size=32, trajectories=True),
             nets_per_batch=2)  # a group of two and one alone: both paths keep trajectories
    return path


def test_pretrain_keeps_each_nets_weights_after_every_epoch(experts):
    pool = Pool.load(experts)
    assert pool.has_trajectories and pool.trajectory_epochs == 3
    assert pool.recipe["trajectories"] is True
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])
    for net in pool.nets:
        traj, final = pool.load_trajectory(net.index), pool.load_net(net.index)
        init = init_params(model, "xavier", derive_seed(0, "pool-net", net.index))
        for k, v in final.items():
            assert traj[k].shape == (4, *v.shape)
            assert torch.equal(traj[k][0], init[k])  # epoch 0: the init
            assert torch.equal(traj[k][-1], v)  # epoch E: the pool's net
            assert not torch.equal(traj[k][1], traj[k][2])


def test_pretrain_retrains_a_net_whose_trajectory_is_lost(experts, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(experts, path)
    before = Pool.load(path).load_trajectory(1)
    (path / trajectory_file(1)).unlink()
    result = pretrain(toy_data(), out=path, n_nets=3, model="mlp", model_kwargs={"hidden": [16]},
                      recipe=PretrainRecipe(real_epochs=3, lr=0.01, batch_size=32,
                                            trajectories=True))
    assert result.trained == [1] and result.kept == [0, 2]
    after = Pool.load(path).load_trajectory(1)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(PoolError, match="different recipe"):  # no silent mixing
        pretrain(toy_data(), out=path, n_nets=4, model="mlp", model_kwargs={"hidden": [16]},
                 recipe=PretrainRecipe(real_epochs=3, lr=0.01, batch_size=32))


def test_a_pool_without_trajectories_records_the_recipe_as_before(tmp_path):
    pretrain(toy_data(), out=tmp_path / "p", n_nets=1, model="mlp",
             model_kwargs={"hidden": [4]}, recipe=PretrainRecipe(real_epochs=1, batch_size=32))
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert "trajectories" not in manifest["recipe"] and "trajectory" not in manifest["nets"][0]
    assert not Pool.load(tmp_path / "p").has_trajectories


def _model():
    return create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])


def _mtt(pool, **sections):
    base = {"init": {"mode": "pretrained-random", "pool": str(pool), "sample_n_nets": 2,
                     "pool_holdout": 0.0},
            "objective": {"kind": "trajectory", "expert_epochs": 1, "max_start_epoch": 2},
            "model": MLP, "synth": {"steps": 1, "epochs": 3, "images_per_class": 2},
            "optim": {"iterations": 6}}
    return toy_config(base, **sections)


def test_segments_are_an_experts_epochs_t_and_t_plus_m(experts):
    pool = Pool.load(experts)
    source = make_init_source(_mtt(experts), _model(), torch.device("cpu"), segments=True)
    assert isinstance(source, ExpertSegments)
    seen = set()
    for it in range(20):
        starts, targets = source.segments(it)
        draws = source.draws(it)
        assert draws == source.draws(it) and len(draws) == 2 == len(starts) == len(targets)
        for (index, t), start, target in zip(draws, starts, targets):
            assert 0 <= t <= 2
            seen.add(t)
            traj = pool.load_trajectory(index)
            assert all(torch.equal(start[k], traj[k][t]) for k in start)
            assert all(torch.equal(target[k], traj[k][t + 1]) for k in target)
    assert seen == {0, 1, 2}


def test_an_mtt_step_from_an_expert_with_no_steps_is_one(experts):
    """From the pool: theta*_t against theta*_{t+M} of the same expert, N = 0."""
    source = make_init_source(_mtt(experts), _model(), torch.device("cpu"), segments=True)
    starts, targets = source.segments(5)
    model = _model()
    learned = {"images": torch.randn(1, 6, 1, 8, 8), "raw_lrs": torch.zeros(3)}
    labels = torch.arange(3).repeat_interleave(2)[None]
    nets = NetsMetaGradient(StepFn(model), mode="recompute", batch=False)
    got = TrajectoryMatching(1, 2).meta_gradient(nets, starts, learned,
                                                 OuterBatch(0, targets=targets),
                                                 labels=labels, window=(0, 0))
    assert got.loss.item() == 2.0


def test_an_expert_that_does_not_move_is_refused(experts, tmp_path):
    import shutil

    path = tmp_path / "still"
    shutil.copytree(experts, path)
    pool = Pool.load(path)
    traj = pool.load_trajectory(0)
    still = {k: v[:1].expand_as(v) for k, v in traj.items()}  # every epoch is the init
    pool.write_net(0, pool.load_net(0), seed=pool.net(0).seed, test_acc=0.0, trajectory=still)
    pool.save_manifest()
    cfg = _mtt(path, init={"sample_n_nets": 3})
    source = make_init_source(cfg, _model(), torch.device("cpu"), segments=True)
    with pytest.raises(PoolError, match="net 0's weights do not change from epoch 0 to 1"):
        source.segments(0)


def test_distill_learns_towards_the_experts_and_records_it(experts, tmp_path):
    data = toy_data()
    result = distill(_mtt(experts, optim={"iterations": 10}), out=tmp_path / "m.safetensors",
                     data=data)
    b = Bundle.load(tmp_path / "m.safetensors")
    assert b.extra["objective"] == {"kind": "trajectory", "expert_epochs": 1,
                                    "max_start_epoch": 2, "rate": "one"}
    assert b.extra["init"]["expert_epochs"] == 1 and b.extra["init"]["trajectory_epochs"] == 3
    assert b.extra["init"]["mode"] == "pretrained-random" and b.extra["init"]["pool_hash"]
    # The set is for fresh nets: dd eval replays it from random ones (not the experts).
    assert b.init_mode == "random"
    # ... and would be even if it recorded the experts' mode: never scored on the pool's nets.
    assert not is_pool_bundle(b) and not is_pool_bundle(
        dataclasses.replace(b, init_mode="pretrained-random"))
    assert is_pool_bundle(dataclasses.replace(b, init_mode="pretrained-random",
                                              extra={**b.extra, "objective": {"kind": "distill"}}))
    report = evaluate_bundle(tmp_path / "m.safetensors", data=data, n_nets=1)
    assert report.protocol == "replay" and 0 <= report.primary.mean <= 1
    assert torch.equal(b.raw_lrs, b.raw_lrs[:1].expand_as(b.raw_lrs))  # one rate
    assert b.raw_lrs[0] != raw_from_lrs(torch.tensor(0.05))  # ... and it was learned
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "m.run" / "metrics.jsonl").read_text().splitlines()]
    assert result.iterations == 10 and all(loss > 0 for loss in losses)


@pytest.mark.parametrize("mode, labels", [("full", False), ("recompute", True)])
def test_resume_is_bit_exact(experts, tmp_path, mode, labels):
    data = toy_data()
    c = _mtt(experts, run={"unroll_memory": mode, "checkpoint_every": 1},
             synth={"learn_labels": labels})
    full, resumed = straight_and_resumed(c, tmp_path, data)
    assert resumed.iterations == 6
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert torch.equal(full.bundle.raw_lrs, resumed.bundle.raw_lrs)
    if labels:
        assert torch.equal(full.bundle.soft_labels, resumed.bundle.soft_labels)
    assert full.final_loss == resumed.final_loss


def test_config_checks(experts):
    assert make_objective(_mtt(experts), 3).needs == EXPERT_SEGMENT
    with pytest.raises(ConfigError, match="needs --init-mode pretrained-random"):
        toy_config(objective={"kind": "trajectory"}).validate()
    with pytest.raises(ConfigError, match="--expert-epochs must be a positive integer"):
        _mtt(experts, objective={"expert_epochs": 0}).validate()
    with pytest.raises(PoolError, match="exceeds the 3 epochs"):
        make_init_source(_mtt(experts, objective={"max_start_epoch": 2, "expert_epochs": 2}),
                         _model(), torch.device("cpu"), segments=True)


def test_presets_follow_mtt():
    for name, dataset in (("mtt-mnist-ipc10", "mnist"), ("mtt-cifar10-ipc10", "cifar10")):
        cfg = build_config(preset=name, overrides={"init": {"pool": "experts"}}).validate()
        o, s = cfg.objective, cfg.synth
        assert (o.kind, o.expert_epochs, o.trajectory_rate) == ("trajectory", 2, "one")
        assert cfg.data.dataset == dataset and s.images_per_class == 10
        assert s.init_images == "real" and cfg.init.mode == "pretrained-random"


@pytest.fixture(scope="module")
def mnist_pool(tmp_path_factory):
    from pathlib import Path

    from ddcli.data import load_dataset

    path = tmp_path_factory.mktemp("pools") / "mnist-mlp"
    data = load_dataset("mnist", root=Path(__file__).parent / "fixtures")
    pretrain(data, out=path, n_nets=2, model="mlp", recipe=PretrainRecipe(real_epochs=0.5))
    return path


def test_cli_refuses_a_pool_without_trajectories(mnist_pool, fixture_root, tmp_path):
    err = one_line_error(run("distill", "mnist", "--data-root", fixture_root, "--model", "mlp",
                             "--objective", "trajectory", "--init-mode", "pretrained-random",
                             "--pool", mnist_pool, "--pool-holdout", "0", "--iterations", "1",
                             "-o", tmp_path / "x.safetensors", "--quiet"), 1)
    assert "keeps no expert trajectories" in err and "--trajectories" in err


def test_cli_pretrain_trajectories_need_whole_epochs(fixture_root, tmp_path):
    err = one_line_error(run("pretrain", "mnist", "--data-root", fixture_root, "--model", "mlp",
                             "--real-epochs", "0.5", "--trajectories", "-o", tmp_path / "p"), 2)
    assert "--real-epochs must be a whole number" in err


@pytest.fixture(scope="module")
def mnist_experts(tmp_path_factory):
    from pathlib import Path

    from ddcli.data import load_dataset

    path = tmp_path_factory.mktemp("pools") / "mnist-mlp-traj"
    data = load_dataset("mnist", root=Path(__file__).parent / "fixtures")
    pretrain(data, out=path, n_nets=1, model="mlp",
             recipe=PretrainRecipe(real_epochs=2, trajectories=True))
    return path


def test_cli_dry_run_of_trajectory_matching_counts_no_real_batch(mnist_experts, fixture_root,
                                                                  tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ddcli.cli import app
    from ddcli.engine import timing

    monkeypatch.setattr(timing, "estimate_time", lambda cfg, **kw: timing.TimeEstimate(
        iterations=1, s_per_iteration=1.0, measured=1, evaluations=0, s_per_eval=0.0))
    args = ["distill", "mnist", "--data-root", str(fixture_root), "--model", "mlp",
            "--objective", "trajectory", "--init-mode", "pretrained-random", "--pool",
            str(mnist_experts), "--pool-holdout", "0", "--max-start-epoch", "0",
            "--expert-epochs", "1", "--dry-run", "-o", str(tmp_path / "m.safetensors")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "no real batch (the outer loss is a distance to expert weights)" in r.stdout
    est = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)["estimate_bytes"]
    assert est["real_batch"] == 0 and est["outer_graph"] == 2 * est["weights"]
    assert not (tmp_path / "m.safetensors").exists()


def test_experts_of_another_dataset_are_refused_in_one_line(experts, tmp_path):
    # Same image shape, so only the dataset's name tells them apart; the run must not
    # start (the set would be led towards another dataset's weights).
    other = dataclasses.replace(toy_data(seed=1), name="other")
    with pytest.raises(PoolError) as err:
        distill(_mtt(experts), out=tmp_path / "m.safetensors", data=other)
    msg = str(err.value)
    assert "experts trained on toy, but this run distils other" in msg and "\n" not in msg
    assert "dd pretrain other --trajectories" in msg
    assert not (tmp_path / "m.safetensors").exists()
