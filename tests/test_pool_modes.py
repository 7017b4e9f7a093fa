"""The pretrained init modes: pool sampling, stored weights, resume, input checks."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ddcli import Bundle, DistillConfig, distill, resume
from ddcli.engine.inits import PretrainedRandomInit, make_init_source
from ddcli.pool.folder import MANIFEST, Pool
from ddcli.evaluate.pool_eval import evaluate_pool_bundle, is_pool_bundle, replay
from ddcli.evaluate._replay_protocol import inner_loop_of
from ddcli.pool.pretrain import PretrainRecipe, pretrain
from ddcli.core.metrics import accuracy
from ddcli.evaluate.initial_nets import HELD_OUT
from ddcli.core.unroll import unroll
from ddcli.cli import app
from ddcli.errors import ConfigError, PoolError
from ddcli.models import create_model

from tests._toy import distill_until_ctrl_c, toy_data

runner = CliRunner()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pools") / "toy"
    pretrain(toy_data(), out=path, n_nets=5, model="mlp", model_kwargs={"hidden": [16]},
             recipe=PretrainRecipe(real_epochs=2, lr=0.01, batch_size=32), nets_per_batch=5)
    return path


def cfg(pool, mode="pretrained-random", **sections) -> DistillConfig:
    base = {
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 1, "step_lr": 0.05},
        "optim": {"iterations": 6, "meta_lr": 0.05, "decay_every": 100.0},
        "init": {"mode": mode, "pool": str(pool), "sample_n_nets": 2},
        "run": {"checkpoint_every": 2, "log_every": 1},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return DistillConfig.from_dict(base)


def test_pretrained_random_samples_only_training_nets(pool_dir, tmp_path, monkeypatch):
    pool = Pool.load(pool_dir)
    train, held = pool.split(0.4)
    assert len(held) == 2
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])
    source = make_init_source(cfg(pool_dir, init={"pool_holdout": 0.4}), model, torch.device("cpu"))
    assert isinstance(source, PretrainedRandomInit)
    # Always the model's parameter order (safetensors' own order varies; rounding follows it).
    assert list(source.sample(0)[0]) == [name for name, _ in model.named_parameters()]
    seen = set()
    for it in range(60):
        picks = source.picks(it)
        assert len(picks) == 2 and len(set(picks)) == 2 and set(picks) <= set(train)
        seen.update(picks)
    assert seen == set(train)  # every training net is used, no held-out one ever
    # Through a whole run: the held-out nets' files are never even read.
    loaded = []
    real_load = Pool.load_net
    monkeypatch.setattr(Pool, "load_net", lambda self, i, device="cpu": (
        loaded.append(i), real_load(self, i, device))[1])
    result = distill(cfg(pool_dir, init={"pool_holdout": 0.4}), out=tmp_path / "b.safetensors",
                     data=toy_data())
    assert loaded and not set(loaded) & set(held)
    init = result.bundle.extra["init"]
    assert init["holdout_indices"] == held and init["train_indices"] == train
    assert init["pool_hash"] == pool.content_hash() and init["pool_holdout"] == 0.4
    assert result.bundle.init_params is None and is_pool_bundle(result.bundle)


def test_pretrained_fixed_stores_the_pool_net(pool_dir, tmp_path):
    pool = Pool.load(pool_dir)
    train, held = pool.split(0.2)
    index = train[-1]
    c = cfg(pool_dir, "pretrained-fixed", init={"pool_index": index})
    b = distill(c, out=tmp_path / "f.safetensors", data=toy_data()).bundle
    b = Bundle.load(tmp_path / "f.safetensors")
    net = pool.load_net(index)
    assert b.init_params.keys() == net.keys()
    assert all(torch.equal(b.init_params[k], net[k]) for k in net)
    info = b.extra["init"]
    assert info["pool_index"] == index and info["net_sha256"] == pool.net(index).sha256
    assert info["pool"] == str(pool_dir.absolute()) and info["holdout_indices"] == held
    assert b.extra["datasets"] == {"source": "toy", "target": "toy"}
    with pytest.raises(ConfigError, match="held-out"):
        distill(cfg(pool_dir, "pretrained-fixed", init={"pool_index": held[0]}),
                out=tmp_path / "h.safetensors", data=toy_data())
    with pytest.raises(ConfigError, match="has no net 99"):
        distill(cfg(pool_dir, "pretrained-fixed", init={"pool_index": 99}),
                out=tmp_path / "x.safetensors", data=toy_data(), force=True)


@pytest.mark.parametrize("mode", ["pretrained-random", "pretrained-fixed"])
def test_resume_is_bit_exact(pool_dir, tmp_path, mode):
    data = toy_data()
    c = cfg(pool_dir, mode)
    full = distill(c, out=tmp_path / "full.safetensors", data=data)

    distill_until_ctrl_c(c, tmp_path / "part.safetensors", data, at=3)
    resumed = resume(tmp_path / "part.run", data=data)
    assert torch.equal(full.bundle.images, resumed.bundle.images)
    assert torch.equal(full.bundle.raw_lrs, resumed.bundle.raw_lrs)
    assert resumed.bundle.extra["init"] == full.bundle.extra["init"]  # pool record survives


def test_pool_must_fit_the_run(pool_dir, tmp_path):
    with pytest.raises(PoolError, match="8x8 images but toy has 1x10x10"):
        distill(cfg(pool_dir), out=tmp_path / "a.safetensors", data=toy_data(hw=10))
    with pytest.raises(PoolError, match="3 classes but toy has 4"):
        distill(cfg(pool_dir), out=tmp_path / "b.safetensors", data=toy_data(classes=4))
    with pytest.raises(PoolError, match=r"match the model options \(--model-arg hidden=\[16\]\)"):
        distill(cfg(pool_dir, model={"kwargs": {"hidden": [8]}}), out=tmp_path / "c.safetensors",
                data=toy_data())
    with pytest.raises(PoolError, match="pretrained on toy"):
        distill(cfg(pool_dir, objective={"kind": "adapt", "source_dataset": "mnist"}),
                out=tmp_path / "d.safetensors", data=toy_data())
    with pytest.raises(ConfigError, match="exceeds the 4 training nets"):
        distill(cfg(pool_dir, init={"sample_n_nets": 5}), out=tmp_path / "e.safetensors",
                data=toy_data())


def test_evaluate_plain_pretrained_bundle(pool_dir, tmp_path):
    data = toy_data()
    b = distill(cfg(pool_dir, optim={"iterations": 10}), out=tmp_path / "b.safetensors",
                data=data).bundle
    report = evaluate_pool_bundle(tmp_path / "b.safetensors", data=data)
    held = b.extra["init"]["holdout_indices"]
    assert report.group == HELD_OUT and [n.pool_index for n in report.nets] == held
    # The numbers are the replay protocol's, recomputed independently here.
    model = create_model(**b.model)
    net = Pool.load(pool_dir).load_net(held[0])
    final = unroll(model, net, b.images, b.labels, b.lrs, create_graph=False).params
    assert report.nets[0].after.accuracy == pytest.approx(accuracy(model, final, data.test_x, data.test_y))
    assert report.nets[0].before.accuracy == pytest.approx(accuracy(model, net, data.test_x, data.test_y))
    d = report.to_dict()
    assert d["summary"]["n_nets"] == 1 and len(d["summary"]["after_per_class"]) == 3
    json.dumps(d)
    assert evaluate_pool_bundle(b, data=data, n_nets=1).nets[0].pool_index == held[0]


def test_evaluate_refuses_a_changed_pool(pool_dir, tmp_path):
    data = toy_data()
    b = distill(cfg(pool_dir), out=tmp_path / "b.safetensors", data=data).bundle
    changed = tmp_path / "changed"
    pretrain(data, out=changed, n_nets=5, model="mlp", model_kwargs={"hidden": [16]},
             recipe=PretrainRecipe(real_epochs=1, lr=0.01, batch_size=32), nets_per_batch=5)
    with pytest.raises(PoolError, match="not the pool"):
        evaluate_pool_bundle(b, data=data, pool=changed)
    with pytest.raises(PoolError, match="pass --pool"):
        evaluate_pool_bundle(b, data=data, pool=tmp_path / "gone")


# --- the input checks through the CLI: one line, the right exit code ---------------------
@pytest.fixture(scope="module")
def mnist_mlp_pool(tmp_path_factory):
    from pathlib import Path

    from ddcli.data import load_dataset

    path = tmp_path_factory.mktemp("pools") / "mnist-mlp"
    data = load_dataset("mnist", root=Path(__file__).parent / "fixtures")
    pretrain(data, out=path, n_nets=3, model="mlp",
             recipe=PretrainRecipe(real_epochs=0.5), nets_per_batch=3)
    return path


def _distill(fixture_root, tmp_path, *args):
    return runner.invoke(app, ["distill", "mnist", "--data-root", str(fixture_root), "--steps",
                               "1", "--epochs", "1", "--iterations", "1", "--batch-size", "32",
                               "-o", str(tmp_path / "x.safetensors"), "--quiet",
                               *map(str, args)])


@pytest.mark.parametrize("args, code, needle", [
    (["--init-mode", "pretrained-random", "--pool", "{missing}"], 1, "no pool at"),
    (["--init-mode", "pretrained-random", "--pool", "{empty}"], 1, "is empty"),
    (["--init-mode", "pretrained-random", "--pool", "{toy}"], 1, "8x8 images but mnist has 1x28x28"),
    (["--init-mode", "pretrained-fixed", "--pool", "{mnist}"], 1, "pass --model mlp"),
    (["--init-mode", "pretrained-random"], 2, "needs --pool"),
    (["--objective", "attack", "--attack-class", "3", "--target-class", "3"], 2, "must differ"),
    (["--objective", "attack", "--attack-class", "0", "--target-class", "10"], 2,
     "--target-class 10 is out of range"),
    (["--objective", "attack", "--attack-class", "0"], 2, "--target-class B"),
    (["--objective", "adapt"], 2, "--objective adapt needs --init-mode pretrained"),
    (["--init-mode", "pretrained-random", "--pool", "{mnist}", "--model", "mlp",
      "--sample-n-nets", "3"], 2, "exceeds the 2 training nets"),
])
def test_cli_input_checks(pool_dir, mnist_mlp_pool, fixture_root, tmp_path, args, code, needle):
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((pool_dir / MANIFEST).read_text())
    (empty / MANIFEST).write_text(json.dumps({**manifest, "nets": []}))
    paths = {"missing": tmp_path / "nope", "empty": empty, "toy": pool_dir,
             "mnist": mnist_mlp_pool}
    args = [a.format(**paths) for a in args]
    r = _distill(fixture_root, tmp_path, *args)
    assert r.exit_code == code, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output


def test_cli_pretrained_random_run(mnist_mlp_pool, fixture_root, tmp_path):
    r = _distill(fixture_root, tmp_path, "--init-mode", "pretrained-random", "--pool",
                 mnist_mlp_pool, "--model", "mlp", "--sample-n-nets", "2", "--pool-holdout",
                 "0.34", "--json")
    assert r.exit_code == 0, r.output
    b = Bundle.load(json.loads(r.stdout)["bundle"])
    assert b.init_mode == "pretrained-random" and b.config["init"]["pool_holdout"] == 0.34
    assert len(b.extra["init"]["holdout_indices"]) == 1


def test_cli_eval_scores_pool_bundle_on_held_out_nets(mnist_mlp_pool, fixture_root, tmp_path):
    r = _distill(fixture_root, tmp_path, "--init-mode", "pretrained-random", "--pool",
                 mnist_mlp_pool, "--model", "mlp", "--sample-n-nets", "2", "--pool-holdout",
                 "0.34", "--json")
    assert r.exit_code == 0, r.output
    bundle = json.loads(r.stdout)["bundle"]
    r = runner.invoke(app, ["eval", bundle, "--data-root", str(fixture_root), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    text = json.dumps(rec)
    assert "before" in text and "after" in text
    r = runner.invoke(app, ["eval", bundle, "--data-root", str(fixture_root), "--pool",
                            str(tmp_path / "nope")])
    assert r.exit_code == 1 and r.stderr.startswith("error:")


def test_pool_evaluation_replays_the_sets_inner_loop(pool_dir, tmp_path):
    """SGD with momentum and soft labels, as distilled: the replay (and so the after
    numbers) is torch.optim.SGD's on the ordered steps with the learned labels."""
    data = toy_data()
    c = cfg(pool_dir, synth={"epochs": 2, "inner_optimizer": "sgd", "inner_momentum": 0.9,
                             "inner_weight_decay": 0.01, "learn_labels": True},
            optim={"iterations": 3})
    b = distill(c, out=tmp_path / "s.safetensors", data=data).bundle
    assert b.soft_labels is not None
    report = evaluate_pool_bundle(tmp_path / "s.safetensors", data=data)
    held = b.extra["init"]["holdout_indices"][0]
    model = create_model(**b.model)
    net = Pool.load(pool_dir).load_net(held)
    model.load_state_dict(net, strict=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)
    for t, lr in enumerate(b.lrs.tolist()):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        x, y = b.images[t % b.steps], b.soft_labels[t % b.steps]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    want = {k: v.detach() for k, v in model.named_parameters()}
    got = replay(model, net, b.images, b.soft_labels, b.lrs, inner_loop_of(b), seed=0)
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    plain = unroll(model, net, b.images, b.labels, b.lrs, create_graph=False).params
    assert not all(torch.allclose(plain[k], want[k], atol=1e-4) for k in want)
    first = next(n for n in report.nets if n.pool_index == held)
    assert first.after.accuracy == pytest.approx(accuracy(model, want, data.test_x, data.test_y))
    assert any("soft labels" in note for note in report.notes)


def test_a_resume_says_what_differs_from_the_process_that_started_it(tmp_path):
    # A resume on the same machine with the same pool continues bit for bit and warns of
    # nothing; a pool retrained in place (as after a fresh clone without its files) or
    # another CPU model is said in one warning line each, and the run still goes on.
    import shutil

    from ddcli.engine.state import load_checkpoint, save_checkpoint
    from ddcli.infra.provenance import resume_differences

    data = toy_data()
    pool = tmp_path / "pool"
    recipe = PretrainRecipe(real_epochs=1, lr=0.01, batch_size=32)
    pretrain(data, out=pool, n_nets=4, model="mlp", model_kwargs={"hidden": [16]},
             recipe=recipe, nets_per_batch=4)
    seen = []

    class Spy:
        def on_start(self, info):
            seen.append(info.warnings)

    distill_until_ctrl_c(cfg(pool), tmp_path / "part.safetensors", data, at=2)
    first = load_checkpoint(tmp_path / "part.run").provenance[0]
    assert first["pool_hash"] == Pool.load(pool).content_hash() and first["cpu"]
    resume(tmp_path / "part.run", data=data, callbacks=Spy(),
           overrides={"optim": {"iterations": 4}})
    assert seen[-1] == []

    shutil.rmtree(pool)  # the same command, other weights (another seed here)
    pretrain(data, out=pool, n_nets=4, model="mlp", model_kwargs={"hidden": [16]},
             recipe=recipe, nets_per_batch=4, seed=1)
    state = load_checkpoint(tmp_path / "part.run")
    state.provenance[0]["cpu"] = "Some Other CPU 9000"
    save_checkpoint(tmp_path / "part.run", state)
    resume(tmp_path / "part.run", data=data, callbacks=Spy(), force=True,
           overrides={"optim": {"iterations": 6}})
    (cpu,), (pool_line,) = ([w for w in seen[-1] if key in w] for key in ("CPU", "pool"))
    assert len(seen[-1]) == 2 and "started on Some Other CPU 9000" in cpu
    assert "not bit for bit" in cpu and "the pool's nets differ" in pool_line
    # versions and data, from the records alone
    a = {"versions": {"torch": "2.13.0", "ddcli": "0.1.0"}, "data": {"sha256": "aa"}}
    b = {"versions": {"torch": "2.14.1", "ddcli": "0.1.0"}, "data": {"sha256": "bb"}}
    lines = resume_differences(a, b)
    assert len(lines) == 2 and "torch 2.14.1 here, 2.13.0 when the run started" in lines[0]
    assert resume_differences(None, b) == [] and resume_differences(a, a) == []


def test_cli_resume_prints_its_warnings_even_quiet(tmp_path, fixture_root):
    from ddcli.engine.state import load_checkpoint, save_checkpoint

    r = runner.invoke(app, ["distill", "mnist", "--data-root", str(fixture_root), "--steps", "1",
                            "--epochs", "1", "--batch-size", "64", "--iterations", "2",
                            "-o", str(tmp_path / "m.safetensors"), "-q"])
    assert r.exit_code == 0, r.output
    state = load_checkpoint(tmp_path / "m.run")
    state.provenance[0]["cpu"] = "Some Other CPU 9000"
    save_checkpoint(tmp_path / "m.run", state)
    r = runner.invoke(app, ["distill", "--resume", str(tmp_path / "m.run"), "--iterations", "3",
                            "--data-root", str(fixture_root), "-o",
                            str(tmp_path / "m3.safetensors"), "-q"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1 and "the run started on Some Other CPU 9000" in lines[0]


def test_a_pool_from_another_dataset_is_said_and_adapt_is_not_warned(pool_dir, tmp_path):
    # The toy pool's images have the same shape as `other`'s, so check_fits passes: only
    # the names tell the datasets apart. A distill run from it says so in one warning
    # line; an adapt run, which means to start from the source dataset, does not.
    import dataclasses

    other = dataclasses.replace(toy_data(seed=1), name="other")
    seen = []

    class Spy:
        def on_start(self, info):
            seen.append(info.warnings)

    distill(cfg(pool_dir, optim={"iterations": 1}), out=tmp_path / "a.safetensors",
            data=other, callbacks=Spy())
    (line,) = seen[-1]
    assert "pretrained on toy, not other" in line and "--source-dataset toy" in line
    distill(cfg(pool_dir, optim={"iterations": 1}), out=tmp_path / "b.safetensors",
            data=toy_data(), callbacks=Spy())
    assert seen[-1] == []
    distill(cfg(pool_dir, optim={"iterations": 1},
                objective={"kind": "adapt", "source_dataset": "toy"}),
            out=tmp_path / "c.safetensors", data=other, callbacks=Spy())
    assert seen[-1] == []
