"""`dd export` and ddcli.export: each format round-trips, warnings, one-line errors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor

from ddcli import Bundle
from ddcli.cli import app
from ddcli.errors import ConfigError, ExportError
from ddcli.export import export
from tests._cli import one_line_error, run as run_cli



def make_bundle(steps=12, classes=10, ipc=1, hw=8, channels=1, epochs=2, init_mode="random",
                names=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = classes * ipc
    return Bundle(
        # wide enough that some pixels fall outside [0, 1] and get clipped
        images=2.0 * torch.randn(steps, n, channels, hw, hw, generator=g),
        labels=torch.arange(classes).repeat_interleave(ipc).repeat(steps, 1),
        raw_lrs=torch.randn(steps * epochs, generator=g) * 0.5 - 4,
        dataset="mnist", classes=names or [str(c) for c in range(classes)],
        mean=(0.1307,) * channels, std=(0.3081,) * channels,
        model={"name": "lenet", "in_channels": channels, "num_classes": classes,
               "image_size": hw},
        init_mode=init_mode, seed=7, epochs=epochs,
    )


def uint8_pixels(b):
    """De-normalised, rounded pixels in flat order, plus how many were clipped."""
    images, _ = b.flat()
    m = torch.tensor(b.mean).view(-1, 1, 1)
    s = torch.tensor(b.std).view(-1, 1, 1)
    v = torch.round((images * s + m) * 255)
    return v.clamp(0, 255).to(torch.uint8), int(((v < 0) | (v > 255)).sum())


@pytest.mark.parametrize("channels, ipc", [(1, 1), (3, 2)])
def test_imagefolder_loads_in_torchvision_with_exact_pixels(tmp_path, channels, ipc):
    b = make_bundle(channels=channels, ipc=ipc, classes=4 if ipc > 1 else 10)
    report = export(b, "imagefolder", tmp_path / "out")
    want, clipped = uint8_pixels(b)
    assert clipped > 0 and report.clipped_pixels == clipped
    assert f"{clipped} of {want.numel()} pixel values" in report.warnings[0]

    ds = ImageFolder(tmp_path / "out", loader=Image.open)  # keeps L images single-channel
    assert ds.classes == b.classes
    assert len(ds) == b.images.shape[0] * b.images.shape[1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    by_file = {r["file"]: r for r in manifest["images"]}
    _, labels = b.flat()
    seen = set()
    for (path, target), (img, _) in zip(ds.samples, ds):
        rec = by_file[os.path.relpath(path, tmp_path / "out")]
        i = rec["index"]
        seen.add(i)
        assert target == labels[i] == rec["label"]
        assert rec["step"] == i // b.images.shape[1]
        assert path.split("/")[-1].startswith(f"step{rec['step']:02d}_")  # padded: sorts by step
        got = pil_to_tensor(img)
        assert got.dtype == torch.uint8 and torch.equal(got, want[i])
    assert seen == set(range(len(ds)))
    assert manifest["lrs"] == pytest.approx(b.lrs.tolist())
    assert manifest["mean"] == list(b.mean) and manifest["std"] == list(b.std)
    assert manifest["classes"] == b.classes and manifest["steps"] == 12


def test_pt_round_trip(tmp_path):
    b = make_bundle()
    report = export(b, "pt", tmp_path / "d.pt")
    d = torch.load(tmp_path / "d.pt", weights_only=True)
    assert set(d) == {"images", "labels", "lrs", "mean", "std", "pixel_space", "classes", "steps"}
    assert d["pixel_space"] == {"kind": "normalized", "mean": [0.1307], "std": [0.3081]}
    assert d["mean"] == [0.1307] and d["classes"] == b.classes and d["steps"] == 12
    images, labels = b.flat()
    assert d["images"].dtype == torch.float32 and d["images"].shape == (120, 1, 8, 8)
    assert d["labels"].dtype == torch.int64
    assert torch.equal(d["images"], images) and torch.equal(d["labels"], labels)
    assert torch.equal(d["lrs"], b.lrs)
    assert report.images == 120 and report.clipped_pixels == 0 and report.warnings == []


def test_npz_round_trip(tmp_path):
    b = make_bundle(names=[f"class {c}" for c in range(10)])
    export(b, "npz", tmp_path / "d.data")  # any suffix: numpy must not append ".npz"
    assert not (tmp_path / "d.data.npz").exists()
    with np.load(tmp_path / "d.data", allow_pickle=False) as z:
        assert set(z.files) == {"images", "labels", "lrs", "mean", "std", "pixel_space",
                                "classes", "steps"}
        assert json.loads(str(z["pixel_space"]))["kind"] == "normalized"
        images, labels = b.flat()
        np.testing.assert_array_equal(z["images"], images.numpy())
        np.testing.assert_array_equal(z["labels"], labels.numpy())
        assert z["labels"].dtype == np.int64 and z["images"].dtype == np.float32
        np.testing.assert_array_equal(z["lrs"], b.lrs.numpy())
        np.testing.assert_array_equal(z["mean"], np.float32(b.mean))
        np.testing.assert_array_equal(z["std"], np.float32(b.std))
        assert z["classes"].tolist() == b.classes and int(z["steps"]) == 12


@pytest.mark.parametrize("fmt", ["pt", "npz", "imagefolder"])
def test_fixed_init_warns(tmp_path, fmt):
    fixed = export(make_bundle(steps=2, init_mode="fixed"), fmt, tmp_path / "f")
    assert any("fixed init (seed 7)" in w for w in fixed.warnings)
    rand = export(make_bundle(steps=2, init_mode="random"), fmt, tmp_path / "r")
    assert not any("init" in w for w in rand.warnings)


def test_imagefolder_replaces_an_earlier_export_only(tmp_path):
    export(make_bundle(steps=3), "imagefolder", tmp_path / "out")
    export(make_bundle(steps=1), "imagefolder", tmp_path / "out")
    assert len(ImageFolder(tmp_path / "out")) == 10  # no stale files from the first export
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier ddcli export"):
        export(make_bundle(steps=1), "imagefolder", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no temp folders


def test_imagefolder_odd_class_names(tmp_path):
    report = export(make_bundle(steps=1, classes=3, names=["b/x", "a", ".hidden"]),
                    "imagefolder", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == [
        "_.hidden", "a", "b_x"]
    assert any("don't sort in label order" in w for w in report.warnings)


def test_bad_format_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="imagefolder, pt, npz"):
        export(make_bundle(steps=1), "tfrecord", tmp_path / "x")


def test_cli_export_and_warnings_on_stderr(tmp_path):
    path = make_bundle(steps=2, init_mode="fixed").save(tmp_path / "b.safetensors")
    r = run_cli("export", path, "--format", "pt", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["path"] == str(tmp_path / "b.pt") and rec["images"] == 20
    assert "warning:" in r.stderr and "fixed init" in r.stderr
    r = run_cli("export", path, "-f", "imagefolder", "-o", tmp_path / "imgs")
    assert r.exit_code == 0 and r.stdout.strip() == f"{tmp_path / 'imgs'}: 20 images as imagefolder"
    assert "were clipped" in r.stderr


@pytest.mark.parametrize("fmt", ["pt", "npz", "imagefolder"])
def test_cli_errors_are_one_line(tmp_path, fmt):
    path = make_bundle(steps=1).save(tmp_path / "b.safetensors")
    err = one_line_error(run_cli("export", path, "--format", "jpeg"), 2)
    assert "jpeg" in err and "imagefolder, pt, npz" in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = one_line_error(run_cli("export", path, "--format", fmt, "-o", blocker / "out"), 1)
    assert "can't write" in err and "file.txt" in err
    assert "no such bundle" in one_line_error(
        run_cli("export", tmp_path / "nope.safetensors", "-f", fmt), 1)
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    assert "bad.safetensors" in one_line_error(
        run_cli("export", tmp_path / "bad.safetensors", "-f", fmt), 1)


def test_exports_evaluate_like_the_bundle(tmp_path, fixture_root):
    """`dd eval` gives the bundle's accuracies on every export of it, at the rate the
    export carries (MTT's protocol trains at the set's learned rate)."""
    from ddcli.data import load_dataset

    d = load_dataset("mnist", root=fixture_root, download=False)
    # 2 steps x 10 classes of real fixture digits, class-major in each step; real pixels
    # are whole uint8 values, so even the imagefolder export is lossless
    idx = torch.stack([(d.train_y == c).nonzero().flatten()[:2] for c in range(10)]).T
    b = Bundle(images=d.train_x[idx.reshape(-1)].view(2, 10, 1, 28, 28),
               labels=torch.arange(10).repeat(2, 1), raw_lrs=torch.tensor([-3.9, -3.7, -4.1, -3.8]),
               dataset="mnist", classes=d.classes, mean=d.mean, std=d.std,
               model={"name": "lenet", "in_channels": 1, "num_classes": 10, "image_size": 28},
               init_mode="random", epochs=2)
    sets = {"bundle": b.save(tmp_path / "b.safetensors")}
    for fmt, name in (("pt", "b.pt"), ("npz", "b.npz"), ("imagefolder", "imgs")):
        sets[fmt] = export(b, fmt, tmp_path / name).path
    accs = {}
    for kind, path in sets.items():
        r = run_cli("eval", path, "--dataset", "mnist", "--data-root", fixture_root,
                    "--protocol", "mtt", "--model", "lenet", "--augment", "none", "--init-scheme", "xavier",
                    "--train-epochs", "5", "--n-nets", "2", "--seed", "0", "--json")
        assert r.exit_code == 0, (kind, r.output)
        rec = json.loads(r.stdout)
        assert rec["kind"] == kind and rec["settings"]["train_lr"] == pytest.approx(b.lrs.mean().item())
        accs[kind] = rec["rows"][0]["accuracies"]
    assert accs["pt"] == accs["bundle"] and accs["npz"] == accs["bundle"], accs
    assert accs["imagefolder"] == accs["bundle"], accs
    assert min(accs["bundle"]) > 0.15  # real digits teach something: above chance (0.1)


def test_grey_imagefolder_is_rgb_by_default_and_one_channel_as_documented(tmp_path):
    """ImageFolder's default loader converts to RGB; the documented loader and the
    Grayscale transform both give the exported single-channel pixels back."""
    from torchvision import transforms

    b = make_bundle(channels=1, steps=2)
    export(b, "imagefolder", tmp_path / "out")
    want, _ = uint8_pixels(b)
    default = ImageFolder(tmp_path / "out")
    assert pil_to_tensor(default[0][0]).shape[0] == 3  # the pitfall
    by_loader = ImageFolder(tmp_path / "out", loader=lambda p: Image.open(p).convert("L"))
    by_transform = ImageFolder(tmp_path / "out", transform=transforms.Grayscale())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    index = {r["file"]: r["index"] for r in manifest["images"]}
    for ds in (by_loader, by_transform):
        for (path, _), (img, _) in zip(ds.samples, ds):
            got = pil_to_tensor(img)
            assert got.shape[0] == 1
            assert torch.equal(got, want[index[os.path.relpath(path, tmp_path / "out")]])
