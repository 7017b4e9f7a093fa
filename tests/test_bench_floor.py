"""bench/floor.py's train-protocol count against FLOPs worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
floor = pytest.importorskip("floor")

from ddcli.models import create_model  # noqa: E402


@pytest.mark.parametrize("epochs, batch_size", [(1, 4), (3, 4), (2, 256)])
def test_train_protocol_flops_match_a_hand_count(epochs, batch_size):
    c, hw, h, k, m, n_test = 1, 4, 16, 3, 6, 10
    model = create_model("mlp", in_channels=c, num_classes=k, image_size=hw, hidden=[h])
    g = torch.Generator().manual_seed(0)
    x, test_x = torch.randn(m, c, hw, hw, generator=g), torch.randn(n_test, c, hw, hw, generator=g)
    y, test_y = torch.arange(m) % k, torch.arange(n_test) % k
    d = c * hw * hw
    forward = d * h + h * k  # multiply-adds per image: two matmuls
    # Backward: both weight gradients, and the input gradient of the second layer only
    # (the images need none).
    backward = d * h + 2 * h * k
    expected = 2 * (epochs * m * (forward + backward) + n_test * forward)
    out = floor.train_protocol(model, x, y, test_x, test_y, epochs=epochs,
                               batch_size=batch_size, measure=False)
    assert out["gflop"] * 1e9 == pytest.approx(expected, rel=1e-12)
    assert out["gflop_test"] * 1e9 == pytest.approx(2 * n_test * forward, rel=1e-12)
    assert "measured_s" not in out


def test_the_test_pass_is_counted_on_a_slice_and_scaled():
    model = create_model("mlp", in_channels=1, num_classes=2, image_size=2, hidden=[3])
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    test_x, test_y = torch.zeros(1000, 1, 2, 2), torch.zeros(1000, dtype=torch.long)
    out = floor.train_protocol(model, x, y, test_x, test_y, epochs=1, measure=True)
    assert out["gflop_test"] * 1e9 == pytest.approx(1000 * 2 * (4 * 3 + 3 * 2))
    assert out["measured_s"] > 0


def test_train_problem_has_the_dataset_shape_and_classes():
    model, x, y, test_x, test_y = floor.train_problem("mnist", "convnet", 8, 2, 30)
    assert x.shape == (20, 1, 28, 28) and test_x.shape == (30, 1, 28, 28)
    assert y.tolist() == list(range(10)) * 2 and test_y.bincount().tolist() == [3] * 10
    assert model.features[0].out_channels == 8


def test_a_dm_iteration_is_counted_as_the_objective_runs_it():
    """DM, an MLP d -> h -> k, B real images and ipc synthetic ones per class: every
    image runs the whole net forward (the embedding is the last layer's input), and only
    the synthetic images are differentiated, through the first layer's input alone."""
    d, h, k, b, ipc = 28 * 28, 16, 10, 8, 2
    cfg, once = floor.problem("dm-mnist-ipc10", [
        'model.name="mlp"', f'model.kwargs={{"hidden": [{h}]}}', 'data.augment="none"',
        f"data.batch_size={b}", f"synth.images_per_class={ipc}"])
    assert cfg.objective.kind == "distribution"
    forward = d * h + h * k
    expected = 2 * (k * b * forward + k * ipc * forward + k * ipc * d * h)
    flops, by_op = floor.count(once)
    assert flops == expected, by_op
