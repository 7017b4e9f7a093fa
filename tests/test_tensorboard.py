"""`--tensorboard DIR`: the event files hold the run's scalars and image grids, read back
with TensorBoard's own reader; without the package, one error line."""

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch

from ddcli import distill
from ddcli import Callbacks
from ddcli.errors import MissingDependencyError

from tests._cli import one_line_error, run
from tests._toy import toy_config, toy_data

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="the optional tensorboard package is not installed (pip install 'ddcli[tb]')")


def _read(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def _png(encoded: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


@needs_tensorboard
def test_event_files_hold_scalars_accuracies_and_the_final_set(tmp_path):
    from ddcli.tensorboard import TensorBoardLogger

    data = toy_data()
    cfg = toy_config(synth={"images_per_class": 2, "learn_labels": True},
                     run={"eval_every": 4, "snapshot_every": 3, "eval_nets": 1})
    with TensorBoardLogger(tmp_path / "tb") as tb:
        result = distill(cfg, out=tmp_path / "b.safetensors", data=data, callbacks=tb)
    acc = _read(tmp_path / "tb")

    # Every iteration's scalars are the ones the run logged (metrics.jsonl, log_every 1).
    logged = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    per_it = {x["iteration"]: x for x in logged if "loss" in x}
    assert sorted(per_it) == list(range(1, 9))
    for tag, key in (("loss/outer", "loss"), ("lr/min", "lr_min"), ("lr/mean", "lr_mean"),
                     ("lr/max", "lr_max"), ("meta_lr", "meta_lr"),
                     ("label_mass/mean", "label_mass_mean")):
        got = _scalars(acc, tag)
        assert sorted(got) == list(range(1, 9)), tag
        for it, value in got.items():
            assert value == pytest.approx(per_it[it][key], rel=1e-6), (tag, it)
    # The last iteration's label mass and rates are the final set's, computed here.
    b = result.bundle
    mass = b.soft_labels.sum(-1)  # (S, n)
    for stat, want in (("min", mass.min()), ("mean", mass.mean()), ("max", mass.max())):
        assert _scalars(acc, f"label_mass/{stat}")[8] == pytest.approx(want.item(), rel=1e-5)
    assert _scalars(acc, "lr/max")[8] == pytest.approx(b.lrs.max().item(), rel=1e-5)
    assert mass.max() != mass.min()  # the labels did move: the check can tell stats apart
    # Periodic accuracies: at 4 and 8, the run's own evaluations.
    assert _scalars(acc, "accuracy/test") == {
        e.iteration: pytest.approx(e.mean, abs=1e-6) for e in result.evals}

    # One grid per step at each snapshot (3, 6) and at the end (8): a row per class.
    assert sorted(acc.Tags()["images"]) == ["synthetic/step_0", "synthetic/step_1"]
    for step in range(2):
        events = acc.Images(f"synthetic/step_{step}")
        assert [e.step for e in events] == [3, 6, 8]
        last = events[-1]
        assert (last.height, last.width) == (3 * 8 + 4, 2 * 8 + 3)  # 1-pixel padding
        # The final grid shows the bundle's images in pixels: rebuilt here, cell by cell.
        pixels = (b.images[step] * 0.25 + 0.5).clamp(0, 1)  # (n, 1, 8, 8); toy mean/std
        png = _png(last.encoded_image_string)
        for i in range(pixels.shape[0]):
            row, col = divmod(i, 2)  # class-major: image i is class i // 2
            cell = png[1 + 9 * row:9 + 9 * row, 1 + 9 * col:9 + 9 * col, 0]
            want = torch.round(pixels[i, 0] * 255).numpy()
            assert np.abs(cell.astype(float) - want).max() <= 1, (step, i)


@needs_tensorboard
def test_a_resumed_run_continues_the_same_curves(tmp_path):
    from ddcli import resume
    from ddcli.tensorboard import TensorBoardLogger

    data = toy_data()
    cfg = toy_config()  # checkpoint every 3 iterations, 8 in all

    class StopAt5:  # what a killed process leaves: the checkpoint of 3, events up to 5
        def on_iteration(self, info):
            if info.iteration == 5:
                raise KeyboardInterrupt

    with TensorBoardLogger(tmp_path / "tb") as tb, pytest.raises(KeyboardInterrupt):
        distill(cfg, out=tmp_path / "b.safetensors", data=data, callbacks=Callbacks(tb, StopAt5()))
    with TensorBoardLogger(tmp_path / "tb") as tb:
        resume(tmp_path / "b.run", data=data, callbacks=tb)
    steps = [e.step for e in _read(tmp_path / "tb").Scalars("loss/outer")]
    assert steps == list(range(1, 9))  # 4 and 5 of the first process were discarded


def test_callbacks_fan_out_each_event_to_those_that_take_it():
    seen = []

    class A:
        def on_iteration(self, info):
            seen.append(("a", info))

    class B:
        def on_iteration(self, info):
            seen.append(("b", info))

        def on_eval(self, ev):
            seen.append(("b-eval", ev))

    both = Callbacks(A(), None, B())
    both.on_iteration(1)
    both.on_eval(2)
    assert seen == [("a", 1), ("b", 1), ("b-eval", 2)]
    assert not hasattr(both, "on_snapshot") and not hasattr(both, "close")


def test_without_the_package_the_library_raises_and_the_cli_says_one_line(
        tmp_path, monkeypatch, fixture_root):
    # An import of a module mapped to None fails, as it does when tensorboard is missing.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    from ddcli.tensorboard import TensorBoardLogger

    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path / "tb")
    r = run("distill", "mnist", "--data-root", fixture_root, "--iterations", "1",
            "-o", tmp_path / "m.safetensors", "--tensorboard", tmp_path / "tb")
    err = one_line_error(r, 1)
    assert "tensorboard package" in err and "pip install" in err, err
    # Refused before any work: no run folder, no bundle, no log folder.
    assert not (tmp_path / "m.run").exists() and not (tmp_path / "tb").exists()
    # and before --nproc starts any process
    r = run("distill", "mnist", "--data-root", fixture_root, "--iterations", "1", "--nproc", "2",
            "--init-mode", "random", "--sample-n-nets", "2", "--n-nets", "2",
            "-o", tmp_path / "m.safetensors", "--tensorboard", tmp_path / "tb")
    assert "tensorboard package" in one_line_error(r, 1)
    assert not (tmp_path / "m.run").exists()
