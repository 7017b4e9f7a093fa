"""`dd visualize` and ddcli.viz: grids hold the right pixels, charts, evolution, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddcli import Bundle
from ddcli.cli import app
from ddcli.errors import CheckpointError, ConfigError
from ddcli.viz import line_chart, load_snapshots, visualize
from ddcli.viz._chart import PALETTE
from ddcli.viz._visualize import _step_title
from tests._cli import one_line_error, run as run_cli



def make_bundle(steps=2, classes=10, ipc=1, hw=28, channels=1, epochs=3, seed=0, names=None,
                shuffle=False):
    g = torch.Generator().manual_seed(seed)
    n = classes * ipc
    labels = torch.arange(classes).repeat_interleave(ipc).repeat(steps, 1)  # (S, n)
    if shuffle:  # labels not class-major: grids must still put each image under its class
        labels = torch.stack([row[torch.randperm(n, generator=g)] for row in labels])
    return Bundle(
        images=1.5 * torch.randn(steps, n, channels, hw, hw, generator=g),
        labels=labels,
        raw_lrs=torch.randn(steps * epochs, generator=g) * 0.5 - 4,
        dataset="mnist" if channels == 1 else "cifar10",
        classes=names or [str(c) for c in range(classes)],
        mean=(0.1307,) * channels, std=(0.3081,) * channels,
        model={"name": "lenet", "in_channels": channels, "num_classes": classes,
               "image_size": hw},
        epochs=epochs,
    )


def expected_pixels(bundle, image):
    """The uint8 pixels a grid cell must show: de-normalised, clipped, rounded."""
    m = torch.tensor(bundle.mean).view(-1, 1, 1)
    s = torch.tensor(bundle.std).view(-1, 1, 1)
    return torch.round((image * s + m).clamp(0, 1) * 255).to(torch.uint8)  # (C, H, W)


def grid_cell(img, n_rows, row, col, hw, scale, x0=0):
    pad = max(2, scale)
    size = hw * scale + pad
    a = np.asarray(img)
    top = a.shape[0] - (n_rows * size + pad)
    y, x = top + pad + row * size, x0 + pad + col * size
    return a[y: y + hw * scale, x: x + hw * scale]


def grid_x0(img, n_rows, first_cell, hw, scale):
    """Where the image grid starts horizontally (after row labels): find cell (0, 0)."""
    want = first_cell.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    for x0 in range(img.width - hw * scale):
        got = grid_cell(img, n_rows, 0, 0, hw, scale, x0=x0)
        if got.shape == want.shape and (got == want).all():
            return x0
    raise AssertionError("cell (0, 0) is nowhere in the picture")


def test_step_grids_overview_and_chart_hold_the_right_pixels(tmp_path):
    b = make_bundle(steps=2, classes=10, ipc=1, shuffle=True)
    paths = visualize(b, tmp_path / "viz", scale=3)
    assert [p.name for p in paths] == ["step_0.png", "step_1.png", "overview.png",
                                       "lr_schedule.png"]
    for p in paths:
        assert p.stat().st_size > 0
        assert np.asarray(Image.open(p)).std() > 0  # not a constant picture
    scale, pad = 3, 3
    for s in range(2):
        img = Image.open(paths[s])
        assert img.mode == "L"
        # auto layout with 1 image per class: one column per class, one row
        assert img.width == 10 * (28 * scale + pad) + pad
        for c in range(10):
            (i,) = (b.labels[s] == c).nonzero().flatten().tolist()
            want = expected_pixels(b, b.images[s, i])[0]
            want = want.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
            np.testing.assert_array_equal(grid_cell(img, 1, 0, c, 28, scale), want)
    ov = Image.open(paths[2])
    first = expected_pixels(b, b.images[0, (b.labels[0] == 0).nonzero().item()])[0]
    x0 = grid_x0(ov, 2, first, 28, scale)
    for s in range(2):
        for c in range(10):
            (i,) = (b.labels[s] == c).nonzero().flatten().tolist()
            want = expected_pixels(b, b.images[s, i])[0].numpy()
            got = grid_cell(ov, 2, s, c, 28, scale, x0=x0)
            np.testing.assert_array_equal(got[::scale, ::scale], want)
    chart = Image.open(paths[3])
    assert chart.size == (640, 360) and chart.mode == "RGB"


def test_rows_layout_and_more_images_than_classes(tmp_path):
    b = make_bundle(steps=1, classes=3, ipc=5, hw=8)
    pix = [expected_pixels(b, b.images[0, i])[0] for i in range(15)]  # class-major: c * 5 + j
    # auto picks rows here (5 images per class > 3 classes): a row per class, labels left
    rows = Image.open(visualize(b, tmp_path / "rows", scale=2)[0])
    x0 = grid_x0(rows, 3, pix[0], 8, 2)
    assert x0 > 0  # room for the class names
    assert rows.width >= x0 + 5 * 18 + 2
    cols = Image.open(visualize(b, tmp_path / "cols", scale=2, layout="columns")[0])
    for c in range(3):
        for j in range(5):
            got_r = grid_cell(rows, 3, c, j, 8, 2, x0=x0)[::2, ::2]
            got_c = grid_cell(cols, 5, j, c, 8, 2)[::2, ::2]
            np.testing.assert_array_equal(got_r, pix[c * 5 + j].numpy())
            np.testing.assert_array_equal(got_c, pix[c * 5 + j].numpy())


@pytest.mark.parametrize("channels, hw, scale", [(1, 28, 1), (3, 32, 2)])
def test_rgb_long_names_and_small_scales(tmp_path, channels, hw, scale):
    names = ["airplane-with-a-very-long-name", "automobile", "bird"]
    b = make_bundle(steps=2, classes=3, ipc=1, hw=hw, channels=channels, names=names)
    for p in visualize(b, tmp_path, scale=scale)[:3]:
        img = Image.open(p)
        assert img.mode == ("L" if channels == 1 else "RGB")
        assert img.width >= 3 * (hw * scale + 2) + 2
        assert np.asarray(img).std() > 0


def test_step_title_has_the_rate_of_every_pass():
    b = make_bundle(steps=2, epochs=3)
    lrs = b.lrs
    title = _step_title(b, 1)
    assert title == "step 1 · lr per pass " + " / ".join(f"{lrs[t].item():.2g}" for t in (1, 3, 5))


def test_output_is_deterministic(tmp_path):
    b = make_bundle(steps=2)
    run = write_snapshots(tmp_path / "run", b, iterations=(5, 10))
    a = visualize(b, tmp_path / "a", scale=2, run_dir=run)
    c = visualize(Bundle.load(b.save(tmp_path / "b.safetensors")), tmp_path / "c", scale=2,
                  run_dir=run)
    assert [p.name for p in a] == [p.name for p in c]
    for p, q in zip(a, c):
        assert p.read_bytes() == q.read_bytes(), p.name


def write_snapshots(run, bundle, iterations):
    (run / "snapshots").mkdir(parents=True)
    for k, it in enumerate(iterations):
        images = bundle.images * (k + 1) / len(iterations)
        torch.save({"iteration": it, "images": images, "raw_lrs": bundle.raw_lrs},
                   run / "snapshots" / f"iter_{it:06d}.pt")
    # the engine's checkpoint: same keys plus others, at the last snapshot's iteration
    torch.save({"iteration": iterations[-1], "images": bundle.images, "raw_lrs": bundle.raw_lrs,
                "optimizer": {"state": {}}, "config": {"a": 1}}, run / "checkpoint.pt")
    return run


def test_evolution_strip_and_gif(tmp_path):
    b = make_bundle(steps=2, classes=4, ipc=1, hw=8)
    run = write_snapshots(tmp_path / "run", b, iterations=(100, 20, 300))
    snaps = load_snapshots(run)
    assert [s.iteration for s in snaps] == [20, 100, 300]  # sorted; checkpoint counted once
    paths = visualize(b, tmp_path / "viz", scale=2, run_dir=run, evolution_step=1)
    assert [p.name for p in paths[-2:]] == ["evolution.png", "evolution.gif"]
    strip = Image.open(paths[-2])
    x0 = grid_x0(strip, 3, expected_pixels(b, snaps[0].images[1, 0])[0], 8, 2)
    for r, snap in enumerate(snaps):
        for c in range(4):
            want = expected_pixels(b, snap.images[1, c])[0].numpy()
            got = grid_cell(strip, 3, r, c, 8, 2, x0=x0)
            np.testing.assert_array_equal(got[::2, ::2], want)
    gif = Image.open(paths[-1])
    assert gif.n_frames == 3


def test_snapshot_errors(tmp_path):
    b = make_bundle(steps=2, classes=4, hw=8)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_snapshots(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_snapshots(tmp_path)
    torch.save({"iteration": 1, "images": torch.zeros(1, 4, 1, 8, 8),
                "raw_lrs": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="pass the run folder this bundle came from"):
        visualize(b, tmp_path / "viz", run_dir=tmp_path)
    torch.save({"iteration": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="needs iteration, images and raw_lrs"):
        load_snapshots(tmp_path)


@pytest.mark.parametrize("kw", [{"scale": 0}, {"scale": 33}, {"layout": "diagonal"},
                                {"evolution_step": 2}])
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(ConfigError):
        visualize(make_bundle(steps=2, hw=8), tmp_path, **kw)


def test_line_chart_draws_each_series_where_it_belongs():
    img = line_chart({"up": [0.0, 1.0], "flat": ([0, 0.5, 1], [0.5, float("nan"), 0.5])},
                     y_min=0, y_max=1, marks=[(0.5, "pass 2")], title="t")
    a = np.asarray(img).astype(int)
    blue = (abs(a - [0, 114, 178]).sum(-1) < 40)  # the first series' colour
    ys, xs = blue.nonzero()
    plot = xs > 60  # ignore the legend swatch at the top right
    ys, xs = ys[plot & (ys > 40)], xs[plot & (ys > 40)]
    assert ys[xs.argmin()] > ys[xs.argmax()]  # rises left to right: lower on screen at left
    assert PALETTE[:2] == ("#0072B2", "#D55E00")
    orange = (abs(a - [213, 94, 0]).sum(-1) < 40)
    assert orange.sum() > 20
    with pytest.raises(ValueError, match="x values"):
        line_chart({"bad": ([0, 1, 2], [1, 2])})


def test_legend_moves_below_a_long_title():
    def swatch_rows(img):  # rows (above the plot) holding the first series' colour
        a = np.asarray(img).astype(int)
        return (abs(a[:60] - [0, 114, 178]).sum(-1) < 40).any(1).nonzero()[0]

    series = {f"paper-mnist-run-{i}": [0.0, float(i)] for i in range(4)}
    short = swatch_rows(line_chart({"a": [0, 1], "b": [1, 0]}, title="t"))
    long = swatch_rows(line_chart(series, title="replay test accuracy during distillation"))
    assert short.min() < 22 <= long.min()  # beside the title; on a row of its own


def test_cli_writes_pictures(tmp_path):
    path = make_bundle(steps=2, hw=8).save(tmp_path / "b.safetensors")
    r = run_cli("visualize", path, "--scale", "2", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["out"] == str(tmp_path / "b.viz")
    assert [p.split("/")[-1] for p in rec["files"]] == ["step_0.png", "step_1.png",
                                                        "overview.png", "lr_schedule.png"]


def test_cli_errors_are_one_line(tmp_path):
    path = make_bundle(steps=2, hw=8).save(tmp_path / "b.safetensors")
    assert "--scale" in one_line_error(run_cli("visualize", path, "--scale", "0"), 2)
    assert "no such bundle" in one_line_error(run_cli("visualize", tmp_path / "nope"), 1)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    bad = one_line_error(run_cli("visualize", tmp_path / "bad.safetensors"), 1)
    assert "bad.safetensors" in bad
    (tmp_path / "empty").mkdir()
    err = one_line_error(run_cli("visualize", path, "--run", tmp_path / "empty"), 1)
    assert "no checkpoint" in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = one_line_error(run_cli("visualize", path, "-o", blocker / "sub"), 1)
    assert "can't write" in err and "file.txt" in err
    assert "is a file" in one_line_error(run_cli("visualize", path, "-o", blocker), 1)


def test_long_runs_are_thinned_evenly(tmp_path):
    from ddcli.viz._visualize import _spread

    b = make_bundle(steps=1, classes=2, hw=4, epochs=1)
    run = write_snapshots(tmp_path / "run", b, iterations=tuple(range(10, 310, 10)))
    snaps = load_snapshots(run)
    picked = [s.iteration for s in _spread(snaps, 12)]
    assert len(picked) == 12 and picked[0] == 10 and picked[-1] == 300
    assert picked == sorted(set(picked))
    paths = visualize(b, tmp_path / "viz", scale=1, run_dir=run)
    assert Image.open(paths[-1]).n_frames == 30  # under the 60-frame cap: every snapshot


def test_engine_snapshots_feed_the_evolution(tmp_path):
    """`dd distill --snapshot-every` writes what `dd visualize --run` draws."""
    from ddcli import DistillConfig, distill
    from tests._toy import toy_data

    cfg = DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32}, "model": {"name": "mlp"},
        "synth": {"steps": 2, "epochs": 1},
        "optim": {"iterations": 4}, "run": {"snapshot_every": 2, "checkpoint_every": 0},
    })
    distill(cfg, out=tmp_path / "b.safetensors", data=toy_data(hw=28))
    snaps = sorted((tmp_path / "b.run" / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["iter_000002.pt", "iter_000004.pt"]
    last = torch.load(snaps[-1], weights_only=True)
    assert torch.equal(last["images"], Bundle.load(tmp_path / "b.safetensors").images)
    paths = visualize(tmp_path / "b.safetensors", tmp_path / "png", run_dir=tmp_path / "b.run")
    assert any(p.name == "evolution.png" for p in paths)


def _toy_bundle(tmp_path, lr, iterations, seed=3):
    from ddcli import DistillConfig, distill
    from tests._toy import toy_data

    cfg = DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32}, "model": {"name": "mlp"},
        "synth": {"steps": 2, "epochs": 1}, "init": {"seed": seed},
        "optim": {"iterations": iterations, "meta_lr": lr}, "run": {"checkpoint_every": 0},
    })
    out = tmp_path / f"b{lr}.safetensors"
    distill(cfg, out=out, data=toy_data(hw=28))
    return Bundle.load(out)


def test_starting_images_are_what_the_engine_started_from(tmp_path):
    from ddcli.viz import starting_images

    # with a vanishing Adam rate the images can't move: they are the start, to 1e-6
    still = _toy_bundle(tmp_path, lr=1e-9, iterations=1)
    start = starting_images(still)
    assert start.shape == still.images.shape
    torch.testing.assert_close(still.images, start, atol=1e-6, rtol=0)
    moved = _toy_bundle(tmp_path, lr=0.05, iterations=5)
    assert torch.equal(starting_images(moved), start)  # same seed, same start
    assert (moved.images - start).abs().max() > 0.1
    other = _toy_bundle(tmp_path / "o", lr=1e-9, iterations=1, seed=4)
    assert not torch.allclose(starting_images(other), start)


def test_change_png_draws_images_minus_start(tmp_path):
    from ddcli.viz import starting_images

    b = _toy_bundle(tmp_path, lr=0.05, iterations=5)
    paths = visualize(b, tmp_path / "viz", scale=2, change=True)
    assert paths[-1].name == "change.png"
    img = Image.open(paths[-1])
    delta = b.images - starting_images(b)
    limit = delta.abs().flatten().quantile(0.995)
    assert limit > 0.05  # five Adam steps of 0.05 moved the images
    def want(s, c):
        (i,) = (b.labels[s] == c).nonzero().flatten().tolist()
        v = (delta[s, i, 0] / (2 * limit) + 0.5).clamp(0, 1)
        return torch.round(v * 255).to(torch.uint8)
    x0 = grid_x0(img, 2, want(0, 0), 28, 2)
    for s in range(2):
        for c in range(3):
            got = grid_cell(img, 2, s, c, 28, 2, x0=x0)[::2, ::2]
            np.testing.assert_array_equal(got, want(s, c).numpy())


def test_change_needs_a_recorded_seed(tmp_path):
    path = make_bundle(steps=2, hw=8).save(tmp_path / "b.safetensors")  # config {}: no seed
    with pytest.raises(ConfigError, match="record the seed"):
        visualize(path, tmp_path / "viz", change=True)
    err = one_line_error(run_cli("visualize", path, "--change"), 2)
    assert "--change" in err and "seed" in err


# --- soft labels and ZCA bundles ----------------------------------------------------------

def test_top_labels_text():
    from ddcli.viz import top_labels

    # class:probability, so "0.60 / 9.14" can't be read for class 0 at .60, class 9 at .14
    assert top_labels(torch.tensor([0.05, 0.0, 0.04, 0.71, 0.0, 0.20])) == "3:.71  5:.20"
    assert top_labels(torch.tensor([1.0, 0.0, 0.0])) == "0:1.00"  # a zero runner-up is left out
    assert top_labels(torch.tensor([0.5, 0.3, 0.2]), k=3) == "0:.50  1:.30  2:.20"


def soft_bundle(**kw):
    import dataclasses

    b = make_bundle(hw=32, channels=3, classes=4, **kw)
    probs = torch.full((*b.labels.shape, 4), 0.02)
    probs.scatter_(-1, b.labels[..., None], 0.7)
    probs[..., 1] += 0.2  # every image's runner-up is class 1 (or its own class gains)
    return dataclasses.replace(b, soft_labels=probs)


def test_soft_labels_caption_every_image(tmp_path):
    from ddcli.viz._visualize import _captions_by_class

    b = soft_bundle(ipc=2)
    caps = _captions_by_class(b, 0)
    assert len(caps) == 4 and all(len(row) == 2 for row in caps)
    assert caps[0][0] == "0:.73  1:.23"  # (.70, .22, .02, .02) / .96
    assert caps[1][0].startswith("1:.94")
    plain = make_bundle(hw=32, channels=3, classes=4, ipc=2)
    paths = visualize(b, tmp_path / "soft", scale=4)
    visualize(plain, tmp_path / "plain", scale=4)
    for name in ("step_0.png", "overview.png"):
        with Image.open(tmp_path / "soft" / name) as s, Image.open(tmp_path / "plain" / name) as p:
            assert s.height > p.height  # a caption band under every row of images
            # the band under the first row holds ink (text), between white paddings
            arr = np.asarray(s.convert("L"))
            assert (arr < 128).any()
    with Image.open(tmp_path / "soft" / "overview.png") as im:
        assert im.width >= 500
    again = visualize(b, tmp_path / "again", scale=4)  # captions are deterministic too
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_a_zca_bundle_is_drawn_in_pixels(tmp_path, monkeypatch):
    from tests._pixels import folder_dataset
    from ddcli.data import load_dataset
    from ddcli.data.zca import unit_pixels, zca_dataset

    monkeypatch.setenv("DDCLI_ZCA_CACHE", str(tmp_path / "cache"))
    white = zca_dataset(load_dataset(folder_dataset(tmp_path / "tree")))
    b = Bundle(images=white.train_x[:6].reshape(2, 3, 3, 8, 8), labels=torch.tensor([[0, 1, 2]] * 2),
               raw_lrs=torch.full((2,), -4.0), dataset=white.name, classes=white.classes,
               mean=white.mean, std=white.std, model={"name": "mlp"},
               pixel_space=white.pixel_space)
    b.labels = white.train_y[:6].reshape(2, 3)
    visualize(b, tmp_path / "v", scale=1, layout="rows")
    # the un-whitened pixels are the dataset's own uint8 values
    data = load_dataset(white.name)
    want = torch.round(unit_pixels(data.train_x[:6], data) * 255).to(torch.uint8)
    with Image.open(tmp_path / "v" / "step_0.png") as im:
        arr = np.asarray(im.convert("RGB"))
    found = {tuple(arr[y:y + 8, x:x + 8].reshape(-1)) for y in range(arr.shape[0] - 7)
             for x in range(arr.shape[1] - 7)}
    for i in range(3):
        assert tuple(want[i].permute(1, 2, 0).reshape(-1).tolist()) in found
