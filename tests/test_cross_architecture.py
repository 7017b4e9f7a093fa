"""Cross-architecture rows: a set made for one model, trained (train protocol) on DC's others."""

import pytest
import torch

from ddcli import Bundle
from ddcli.core.params import init_params
from ddcli.core.rates import raw_from_lrs
from ddcli.evaluate import EvalConfig, evaluate
from ddcli.models import create_model, model_info
from tests._toy import toy_data

CLASSES = 3


@pytest.fixture
def toy_bundle(tmp_path):
    """An MLP set of 2 images per class for 28 px toy data (the size DC's models take)."""
    data = toy_data(classes=CLASSES, hw=28, n_train=30, n_test=30)
    mlp = create_model("mlp", in_channels=1, num_classes=CLASSES, image_size=28, hidden=[8])
    x, y = data.train_x[:2 * CLASSES], data.train_y[:2 * CLASSES]  # classes cycle 0, 1, 2
    path = Bundle(
        images=x.reshape(1, 2 * CLASSES, 1, 28, 28), labels=y[None],
        raw_lrs=raw_from_lrs(torch.full((1,), 0.05)), dataset="toy", classes=data.classes,
        mean=data.mean, std=data.std, model=mlp.ddcli_spec, epochs=1,
        init_params=init_params(mlp, "xavier", 0),
    ).save(tmp_path / "toy.safetensors")
    return path, data


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18"])
def test_a_dc_model_gives_a_train_protocol_row(toy_bundle, tmp_path, name):
    path, data = toy_bundle
    # Small widths keep this fast; a factory file is how `--model` takes options.
    (tmp_path / "small.py").write_text(
        "from ddcli.models import create_model, model_info\n"
        f"def small(**sizes):\n    return create_model({name!r}, **model_info({name!r}).small, **sizes)\n")
    cfg = EvalConfig(protocol="train", model=f"{tmp_path / 'small.py'}:small", n_nets=2,
                     train_epochs=3, batching="loop")
    report = evaluate(path, cfg, data=data)
    row = report.rows[0]
    assert row.n == 2 and len(row.accuracies) == 2
    assert all(0.0 <= a <= 1.0 for a in row.accuracies)
    assert report.model["name"].endswith("small.py:small")
    # The nets were the DC model at its small width: the row's parameter count says so.
    expected = create_model(name, in_channels=1, num_classes=CLASSES, image_size=28,
                            **model_info(name).small)
    built = create_model(report.model["name"], in_channels=1, num_classes=CLASSES, image_size=28)
    assert [p.shape for p in built.parameters()] == [p.shape for p in expected.parameters()]


def test_a_registered_name_at_its_default_width(toy_bundle):
    path, data = toy_bundle
    cfg = EvalConfig(protocol="train", model="alexnet", n_nets=1, train_epochs=1,
                     batching="loop")
    report = evaluate(path, cfg, data=data)
    assert report.model["name"] == "alexnet" and report.model["in_channels"] == 1
    assert report.rows[0].n == 1
