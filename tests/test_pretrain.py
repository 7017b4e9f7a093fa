"""`dd pretrain` and the pool format: loadable pools, resume, batching, errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ddcli.core.seeds import derive_seed
from ddcli.pool.folder import MANIFEST, Pool, net_file
from ddcli.pool.pretrain import PretrainRecipe, pretrain
from ddcli.core.metrics import accuracy
from ddcli.cli import app
from ddcli.errors import ConfigError, PoolError
from ddcli.models import create_model

from tests._toy import toy_data

MLP = {"model": "mlp", "model_kwargs": {"hidden": [16]}}
RECIPE = PretrainRecipe(real_epochs=2, lr=0.01, batch_size=32)
runner = CliRunner()


def make_pool(path, n=4, data=None, **kw):
    args = {**MLP, "recipe": RECIPE, "nets_per_batch": 2, **kw}
    return pretrain(data or toy_data(), out=path, n_nets=n, **args)


def test_pool_is_loadable_and_accuracies_match_a_recomputation(tmp_path):
    data = toy_data()
    result = make_pool(tmp_path / "pool", n=3, data=data)
    pool = Pool.load(tmp_path / "pool")
    assert pool.indices == [0, 1, 2] and result.trained == [0, 1, 2] and result.kept == []
    assert pool.dataset == "toy" and pool.input_shape == (1, 8, 8) and pool.classes == data.classes
    assert pool.model == {"name": "mlp", "in_channels": 1, "num_classes": 3, "image_size": 8,
                          "hidden": [16]}
    assert pool.recipe["optimizer"] == "adam" and pool.recipe["lr"] == 0.01
    model = create_model(**pool.model)
    seeds = set()
    for net in pool.nets:
        assert (tmp_path / "pool" / net_file(net.index)).exists()
        assert net.seed == derive_seed(0, "pool-net", net.index)
        seeds.add(net.seed)
        params = pool.load_net(net.index)
        assert params.keys() == dict(model.named_parameters()).keys()
        assert accuracy(model, params, data.test_x, data.test_y) == pytest.approx(net.test_acc)
        assert net.test_acc > 0.9  # chance is 1/3: the nets did learn
    assert len(seeds) == 3
    manifest = json.loads((tmp_path / "pool" / MANIFEST).read_text())
    assert manifest["format"] == "ddcli-pool" and len(manifest["nets"]) == 3
    # Each net's CPU time: its group's, shared (nets_per_batch=2: nets 0 and 1 together).
    spent = [n["cpu_s"] for n in manifest["nets"]]
    assert all(c > 0 for c in spent) and spent[0] == spent[1]
    assert sum(spent) == pytest.approx(result.cpu_seconds, abs=0.01)
    assert result.pool_cpu_seconds == pytest.approx(sum(spent))


def test_resume_keeps_existing_nets_and_grows_the_pool(tmp_path):
    make_pool(tmp_path / "pool", n=2)
    before = {i: (tmp_path / "pool" / net_file(i)).read_bytes() for i in (0, 1)}
    result = make_pool(tmp_path / "pool", n=4)
    assert result.kept == [0, 1] and result.trained == [2, 3]
    for i, data in before.items():
        assert (tmp_path / "pool" / net_file(i)).read_bytes() == data
    assert Pool.load(tmp_path / "pool").indices == [0, 1, 2, 3]
    kept = [n.cpu_s for n in Pool.load(tmp_path / "pool").nets]
    assert result.pool_cpu_seconds == pytest.approx(sum(kept))
    assert result.cpu_seconds == pytest.approx(sum(kept[2:]), abs=0.01)
    # A crash after writing net files but before the manifest loses nothing.
    (tmp_path / "pool" / MANIFEST).unlink()
    again = make_pool(tmp_path / "pool", n=4)
    assert again.trained == [] and again.kept == [0, 1, 2, 3]
    # A half-written net file is retrained, not trusted.
    (tmp_path / "pool" / net_file(3)).write_bytes(b"garbage")
    assert make_pool(tmp_path / "pool", n=4).trained == [3]


def test_other_recipe_into_the_same_folder_is_refused(tmp_path):
    make_pool(tmp_path / "pool", n=1)
    with pytest.raises(PoolError, match="different recipe"):
        make_pool(tmp_path / "pool", n=2, recipe=PretrainRecipe(real_epochs=3, lr=0.01))
    with pytest.raises(PoolError, match="different seed"):
        make_pool(tmp_path / "pool", n=2, seed=7)


def test_batched_training_matches_one_at_a_time(tmp_path):
    """vmap over stacked nets trains each net as if it were alone (to float round-off)."""
    one = make_pool(tmp_path / "one", n=3, nets_per_batch=1).pool
    batched = make_pool(tmp_path / "batched", n=3, nets_per_batch=3).pool
    for i in range(3):
        a, b = one.load_net(i), batched.load_net(i)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    # ... and the nets really differ from each other (own seeds, own shuffles).
    assert not torch.allclose(one.load_net(0)["layers.1.weight"], one.load_net(1)["layers.1.weight"])


def test_split_is_deterministic_and_disjoint(tmp_path):
    pool = make_pool(tmp_path / "pool", n=5).pool
    train, held = pool.split(0.2)
    assert (train, held) == pool.split(0.2) and len(held) == 1 and len(train) == 4
    assert sorted(train + held) == [0, 1, 2, 3, 4]
    assert pool.split(0.0) == ([0, 1, 2, 3, 4], [])
    assert len(pool.split(0.9)[0]) == 1  # always one training net left
    with pytest.raises(ConfigError):
        pool.split(1.0)


def test_pool_load_errors(tmp_path):
    with pytest.raises(PoolError, match="no pool at"):
        Pool.load(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(PoolError, match="no pool.json"):
        Pool.load(tmp_path / "bare")
    pool = make_pool(tmp_path / "pool", n=1).pool
    manifest = pool.to_manifest()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / MANIFEST).write_text(json.dumps({**manifest, "nets": []}))
    with pytest.raises(PoolError, match="empty"):
        Pool.load(tmp_path / "empty")
    file = tmp_path / "pool" / net_file(0)
    file.write_bytes(file.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PoolError, match="hash"):
        Pool.load(tmp_path / "pool").load_net(0)


def test_cli_pretrain_json_and_resume(tmp_path, fixture_root):
    args = ["pretrain", "mnist", "--data-root", str(fixture_root), "--model", "mlp",
            "--n-nets", "2", "--real-epochs", "0.5", "-o", str(tmp_path / "p"), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["n_nets"] == 2 and rec["trained"] == [0, 1] and rec["s_per_net_epoch"] > 0
    assert 0 <= rec["test_acc"]["min"] <= rec["test_acc"]["max"] <= 1
    assert rec["cpu_s"] > 0 and rec["pool_cpu_s"] == pytest.approx(rec["cpu_s"], abs=0.02)
    r = runner.invoke(app, args[:-1] + ["--quiet"])
    assert r.exit_code == 0 and "0 trained now, 2 kept" in r.stdout
    assert "0.00 CPU-hours now, " in r.stdout and "for the whole pool" in r.stdout
    # A net made before ddcli recorded CPU time (neither its file nor the manifest has
    # it): the pool loads, grows, and its total says what it lacks.
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    manifest, net0 = tmp_path / "p" / MANIFEST, tmp_path / "p" / net_file(0)
    with safe_open(str(net0), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "cpu_s"}
    save_file(load_file(str(net0)), str(net0), metadata=meta)
    old = json.loads(manifest.read_text())
    for net in old["nets"]:
        del net["cpu_s"]
    manifest.write_text(json.dumps(old))
    assert all(n.cpu_s is None for n in Pool.load(tmp_path / "p").nets)
    r = runner.invoke(app, [*args[:-1], "--n-nets", "3", "--quiet"])
    assert r.exit_code == 0 and "1 trained now, 2 kept" in r.stdout, r.output
    assert "some kept nets predate the record of CPU time" in r.stdout
    nets = json.loads(manifest.read_text())["nets"]
    assert "cpu_s" not in nets[0] and nets[1]["cpu_s"] > 0 and nets[2]["cpu_s"] > 0


def test_cli_pretrain_model_args_build_the_pool_model(tmp_path, fixture_root):
    args = ["pretrain", "mnist", "--data-root", str(fixture_root), "--model", "convnet",
            "--model-arg", "width=4", "--model-arg", "depth=2", "--n-nets", "1",
            "--real-epochs", "0.1", "-o", str(tmp_path / "p"), "--quiet"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    pool = Pool.load(tmp_path / "p")
    assert (pool.model["width"], pool.model["depth"]) == (4, 2)
    convs = [v for v in pool.load_net(0).values() if v.dim() == 4]
    assert len(convs) == 2 and all(w.shape[0] == 4 for w in convs)


@pytest.mark.parametrize("flag, value, code, needle", [
    ("--model-arg", "width", 2, "--model-arg takes KEY=VALUE (e.g. width=32), got 'width'"),
    ("--model-arg", "widht=3", 2, "model 'convnet' has no option 'widht'"),
    ("--optimizer", "lbfgs", 2, "--optimizer must be one of"),
    ("--n-nets", "0", 2, "--n-nets must be a positive integer"),
    ("--real-epochs", "0", 2, "--real-epochs must be positive"),
    ("--model", "resnet9000", 2, "unknown model"),
])
def test_cli_pretrain_errors_are_one_line(tmp_path, fixture_root, flag, value, code, needle):
    r = runner.invoke(app, ["pretrain", "mnist", "--data-root", str(fixture_root), "--model",
                            "convnet", flag, value, "-o", str(tmp_path / "p")])
    assert r.exit_code == code, r.output
    err = r.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in r.output


def test_pretrain_options_are_the_recipes_fields(monkeypatch, tmp_path):
    # dd pretrain's recipe options come from PretrainRecipe's fields: with none given the
    # pool is trained with PretrainRecipe() itself, and each given one lands in its field.
    import ddcli.cli.pretrain as pretrain_cli
    from ddcli.errors import DDError
    from ddcli.pool.recipe import recipe_flags

    seen = []

    def capture(dataset, *, recipe, **kw):
        seen.append(recipe)
        raise DDError("captured")

    monkeypatch.setattr(pretrain_cli, "pretrain", capture)
    base = ["pretrain", "mnist", "-o", str(tmp_path / "pool")]
    assert runner.invoke(app, base).exit_code == 1 and seen[-1] == PretrainRecipe()
    r = runner.invoke(app, [*base, "--optimizer", "sgd", "--lr", "0.05", "--real-epochs", "3",
                            "--weight-decay", "0.001", "--trajectories"])
    assert r.exit_code == 1 and seen[-1] == PretrainRecipe(
        real_epochs=3.0, optimizer="sgd", lr=0.05, weight_decay=0.001, trajectories=True)
    helped = runner.invoke(app, ["pretrain", "--help"]).stdout
    assert all(f.names[0] in helped for f in recipe_flags())


def test_augmented_pretraining_is_sgd_on_each_nets_own_dsa_draws(tmp_path):
    # --augment dsa (MTT's experts): net i's step t trains on DSA(x, seed(i, t)), drawn per
    # net, so a net trained in a vmapped group of 2 is the net trained alone; checked
    # against a plain SGD loop written here, and the recipe records the augmentation.
    from ddcli.core.augment import DSA
    from ddcli.core.params import init_params

    data = toy_data()
    recipe = PretrainRecipe(real_epochs=1, optimizer="sgd", lr=0.05, momentum=0.0,
                            batch_size=len(data.train_x) // 2, augment="dsa")
    grouped = pretrain(data, out=tmp_path / "g", n_nets=2, recipe=recipe, nets_per_batch=2, **MLP)
    alone = pretrain(data, out=tmp_path / "a", n_nets=2, recipe=recipe, nets_per_batch=1, **MLP)
    plain = pretrain(data, out=tmp_path / "p", n_nets=1, nets_per_batch=1, **MLP,
                     recipe=PretrainRecipe(real_epochs=1, optimizer="sgd", lr=0.05,
                                           momentum=0.0, batch_size=len(data.train_x) // 2))
    assert grouped.pool.recipe["augment"] == "dsa" and "augment" not in plain.pool.recipe
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])
    n, b = len(data.train_x), len(data.train_x) // 2
    for i in (0, 1):
        params = {k: v.clone().requires_grad_(True)
                  for k, v in init_params(model, "xavier", derive_seed(0, "pool-net", i)).items()}
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed(0, "pool-shuffle", i, 0)))
        for t in range(n // b):
            idx = perm[t * b:(t + 1) * b]
            x = DSA()(data.train_x[idx], derive_seed(0, "pool-augment", i, t))
            loss = torch.nn.functional.cross_entropy(
                torch.func.functional_call(model, params, (x,)), data.train_y[idx])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (v - 0.05 * g).detach().requires_grad_(True)
                      for (k, v), g in zip(params.items(), grads)}
        for pool in (grouped.pool, alone.pool):
            got = pool.load_net(i)
            for k, v in params.items():
                torch.testing.assert_close(got[k], v.detach(), rtol=1e-5, atol=1e-6)
    unaugmented = plain.pool.load_net(0)
    assert any(not torch.allclose(unaugmented[k], grouped.pool.load_net(0)[k]) for k in params)


@pytest.mark.parametrize("name, needle", [("dc", "DC's evaluation augmentation"),
                                          ("dsa:blur", "unknown DSA op families"),
                                          ("jitter", "unknown augmentation")])
def test_pretrain_refuses_an_unusable_augmentation_in_one_line(tmp_path, fixture_root, name,
                                                                needle):
    r = runner.invoke(app, ["pretrain", "mnist", "--data-root", str(fixture_root), "--augment",
                            name, "-o", str(tmp_path / "p")])
    err = r.stderr.strip()
    assert r.exit_code == 2, r.output
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()


def test_validation_images_never_reach_a_pools_training(tmp_path, monkeypatch):
    # --validation N: every net trains on the training images dd distill --validation N
    # keeps (the same N held out), and is still tested on the test set.
    import ddcli.pool.pretrain as pp
    from ddcli.data import validation_split

    data = toy_data()
    seen = []
    real = pp._train_group

    def spy(model, group, seeds, scheme, seed, recipe, total, train_x, train_y, callbacks):
        seen.append((train_x.clone(), train_y.clone()))
        return real(model, group, seeds, scheme, seed, recipe, total, train_x, train_y, callbacks)

    monkeypatch.setattr(pp, "_train_group", spy)
    recipe = PretrainRecipe(real_epochs=1, lr=0.01, batch_size=32, validation=24)
    result = pretrain(data, out=tmp_path / "p", n_nets=2, recipe=recipe, nets_per_batch=1, **MLP)
    train, held = validation_split(len(data.train_y), 24)
    for x, y in seen:
        assert torch.equal(x, data.train_x[train]) and torch.equal(y, data.train_y[train])
    assert result.pool.recipe["validation"] == 24
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])
    net = result.pool.nets[0]
    assert accuracy(model, result.pool.load_net(0), data.test_x, data.test_y) == pytest.approx(
        net.test_acc)
    assert "validation" not in make_pool(tmp_path / "q", n=1).pool.recipe  # 0: not recorded


def test_pretrain_validation_must_be_a_count(tmp_path, fixture_root):
    r = runner.invoke(app, ["pretrain", "mnist", "--data-root", str(fixture_root), "--validation",
                            "-3", "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "--validation must be a count of images >= 0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
