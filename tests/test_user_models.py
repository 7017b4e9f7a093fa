"""Your own model: --model FILE.py:FACTORY or MODULE:FACTORY, for distill, eval and pretrain."""

import json
import textwrap

import pytest
import torch
from torch.func import functional_call

from ddcli import Bundle
from ddcli.errors import ConfigError, ModelError, UnknownModelError
from ddcli.models import check_functional, create_model
from tests._cli import one_line_error, run

NETS = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """A linear layer on the flattened image; records what it was built with."""

    def __init__(self, *, in_channels, num_classes, image_size, hidden=0):
        super().__init__()
        self.built_with = (in_channels, num_classes, image_size, hidden)
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def with_batchnorm(*, in_channels, num_classes, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, 2, 3, padding=1), nn.BatchNorm2d(2),
                         nn.Flatten(), nn.Linear(2 * image_size * image_size, num_classes))


not_a_factory = 3
'''


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def test_a_file_factory_is_called_with_the_sizes_and_its_spec_rebuilds_it(nets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = create_model("nets.py:Tiny", in_channels=1, num_classes=3, image_size=8, hidden=5)
    assert model.built_with == (1, 3, 8, 5)
    assert model.ddcli_spec == {"name": f"{nets.resolve()}:Tiny", "in_channels": 1,
                                "num_classes": 3, "image_size": 8, "hidden": 5}
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x), rtol=0, atol=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the spec names the file by its absolute path
    rebuilt = create_model(**json.loads(json.dumps(model.ddcli_spec)))
    assert rebuilt.built_with == (1, 3, 8, 5)


def test_a_module_factory(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("mypkg.nets:Tiny", in_channels=3, num_classes=2, image_size=4)
    assert model.ddcli_spec["name"] == "mypkg.nets:Tiny"
    assert model(torch.zeros(1, 3, 4, 4)).shape == (1, 2)


@pytest.mark.parametrize("name,error,needle", [
    ("nets.py:Missing", UnknownModelError, "has no 'Missing'"),
    ("nets.py:not_a_factory", UnknownModelError, "non-callable 'not_a_factory'"),
    ("gone.py:Tiny", ModelError, "gone.py not found"),
    ("broken.py:Tiny", ModelError, "failed to import: SyntaxError"),
    ("no_such_module_xyz.nets:Tiny", UnknownModelError, "no module named 'no_such_module_xyz'"),
    ("nets.py:", ConfigError, "FILE.py:FACTORY"),
])
def test_what_can_go_wrong_is_one_line(nets, tmp_path, monkeypatch, name, error, needle):
    (tmp_path / "broken.py").write_text("def Tiny(:\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=needle) as err:
        create_model(name, in_channels=1, num_classes=3, image_size=8)
    assert "\n" not in str(err.value)


def test_a_factory_that_fails_or_returns_no_module(nets, tmp_path, monkeypatch):
    (tmp_path / "odd.py").write_text("def none(**kw):\n    return None\n"
                                     "def picky(*, in_channels):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="returned a NoneType, not an nn.Module"):
        create_model("odd.py:none", in_channels=1, num_classes=3, image_size=8)
    with pytest.raises(ModelError, match="failed to build with in_channels=1.*TypeError"):
        create_model("odd.py:picky", in_channels=1, num_classes=3, image_size=8)


def test_a_model_with_buffers_is_refused(nets, monkeypatch):
    monkeypatch.chdir(nets.parent)
    model = create_model("nets.py:with_batchnorm", in_channels=1, num_classes=3, image_size=8)
    with pytest.raises(ModelError, match="buffers .*running_mean"):
        check_functional(model)


# --- through the CLI: recorded in the bundle, rebuilt by eval, used by pretrain ---


def test_distill_records_it_and_eval_rebuilds_it(nets, tmp_path, fixture_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tiny.safetensors"
    r = run("distill", "mnist", "--data-root", fixture_root, "--model", "nets.py:Tiny",
            "--iterations", 1, "--steps", 1, "--epochs", 1, "--batch-size", 64, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert "mnist/Tiny" in r.stdout
    assert Bundle.load(out).model["name"] == f"{nets.resolve()}:Tiny"
    r = run("eval", out, "--data-root", fixture_root, "--n-nets", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["name"] == f"{nets.resolve()}:Tiny"

    # Moved: the recorded path is gone, and naming the new place rebuilds it.
    (tmp_path / "moved").mkdir()
    nets.rename(tmp_path / "moved" / "nets.py")
    err = one_line_error(run("eval", out, "--data-root", fixture_root, "--n-nets", 1), 1)
    assert "nets.py not found" in err and "--model" in err
    r = run("eval", out, "--data-root", fixture_root, "--n-nets", 1, "--json",
            "--model", "moved/nets.py:Tiny")
    assert r.exit_code == 0, r.output


def test_eval_train_protocol_and_pretrain_take_it(nets, tmp_path, fixture_root, monkeypatch):
    from ddcli.core.params import init_params
    from ddcli.core.rates import raw_from_lrs

    monkeypatch.chdir(tmp_path)
    lenet = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    g = torch.Generator().manual_seed(0)
    bundle = Bundle(
        images=torch.randn(1, 10, 1, 28, 28, generator=g), labels=torch.arange(10)[None],
        raw_lrs=raw_from_lrs(torch.full((1,), 0.02)), dataset="mnist",
        classes=[str(i) for i in range(10)], mean=(0.1307,), std=(0.3081,),
        model=lenet.ddcli_spec, epochs=1, init_params=init_params(lenet, "xavier", 0),
    ).save(tmp_path / "lenet.safetensors")
    r = run("eval", bundle, "--data-root", fixture_root, "--protocol", "train", "--model",
            "nets.py:Tiny", "--n-nets", 1, "--train-epochs", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["name"] == f"{nets.resolve()}:Tiny"  # the row's model

    r = run("pretrain", "mnist", "--data-root", fixture_root, "--model", "nets.py:Tiny",
            "--n-nets", 1, "--real-epochs", 0.2, "-o", tmp_path / "pool", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == f"{nets.resolve()}:Tiny"


@pytest.mark.parametrize("spec,code,needle", [
    ("nets.py:Missing", 2, "has no 'Missing'"),
    ("gone.py:Tiny", 1, "gone.py not found"),
    ("nets.py:with_batchnorm", 1, "running_mean"),
])
def test_cli_errors_are_one_line_with_their_exit_code(nets, tmp_path, fixture_root, monkeypatch,
                                                      spec, code, needle):
    monkeypatch.chdir(tmp_path)
    for command in (["distill", "mnist", "--iterations", 1, "--steps", 1, "--epochs", 1,
                     "-o", tmp_path / "x.safetensors"],
                    ["pretrain", "mnist", "--n-nets", 1, "-o", tmp_path / "pool"]):
        err = one_line_error(run(*command, "--data-root", fixture_root, "--model", spec), code)
        assert needle in err


def test_the_config_names_the_file_absolutely_so_a_resume_elsewhere_finds_it(
        nets, tmp_path, fixture_root, monkeypatch):
    from ddcli import DistillConfig

    monkeypatch.chdir(tmp_path)
    cfg = DistillConfig.from_dict({"model": {"name": "nets.py:Tiny"}})
    assert cfg.model.name == f"{nets.resolve()}:Tiny"
    assert DistillConfig.from_dict({"model": {"name": "pkg.mod:Tiny"}}).model.name == "pkg.mod:Tiny"
    out = tmp_path / "t.safetensors"
    common = ("--data-root", fixture_root, "--batch-size", 64, "-q")
    r = run("distill", "mnist", "--model", "nets.py:Tiny", "--iterations", 1, "--steps", 1,
            "--epochs", 1, "-o", out, *common)
    assert r.exit_code == 0, r.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = tmp_path / "t2.safetensors"
    r = run("distill", "--resume", tmp_path / "t.run", "--iterations", 2, "-o", again, *common)
    assert r.exit_code == 0, r.output
    assert Bundle.load(again).model["name"] == f"{nets.resolve()}:Tiny"
