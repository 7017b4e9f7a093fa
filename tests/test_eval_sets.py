"""Image sets from other tools (.pt, .npz, ImageFolder) score like the bundle they hold."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddcli import Bundle
from ddcli.core.params import init_params
from ddcli.data._realdata import normalized_tensor
from ddcli.errors import ConfigError, ImageSetError
from ddcli.evaluate import evaluate_bundle, evaluate_set, load_image_set
from ddcli.models import create_model
from ddcli.core.rates import raw_from_lrs

from tests._toy import toy_data

SETTINGS = dict(protocol="train", model="mlp", n_nets=3, train_epochs=8, batch_size=4, seed=5)


@pytest.fixture(scope="module")
def bundle():
    """A toy bundle whose images survive uint8 quantisation exactly."""
    data = toy_data()
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2 * 6, 1, 8, 8), generator=g, dtype=torch.uint8).numpy()
    images = normalized_tensor(u8, data.mean, data.std).reshape(2, 6, 1, 8, 8)
    model = create_model("mlp", in_channels=1, num_classes=3, image_size=8, hidden=[16])
    return Bundle(
        images=images, labels=torch.arange(3).repeat_interleave(2).expand(2, 6).contiguous(),
        raw_lrs=raw_from_lrs(torch.tensor([0.02, 0.05, 0.03, 0.04])), dataset="toy",
        classes=list(data.classes), mean=data.mean, std=data.std, model=model.ddcli_spec,
        epochs=2, init_params=init_params(model, "xavier", 0),
    )


def write_pt(b: Bundle, path):
    x, y = b.flat()
    torch.save({"images": x, "labels": y, "lrs": b.lrs}, path)


def write_npz(b: Bundle, path, mean=None, std=None):
    x, y = b.flat()
    if mean is not None:  # the same pixels under another normalisation
        pixels = x * torch.tensor(b.std) + torch.tensor(b.mean)
        x = (pixels - torch.tensor(mean)) / torch.tensor(std)
    np.savez(path, images=x.numpy(), labels=y.numpy(), lrs=b.lrs.numpy(),
             mean=np.asarray(mean or b.mean, np.float32), std=np.asarray(std or b.std, np.float32),
             classes=np.asarray(b.classes), steps=np.asarray(b.steps))


def write_folder(b: Bundle, path, manifest: bool):
    x, y = b.flat()
    u8 = ((x * b.std[0] + b.mean[0]) * 255).round().clamp(0, 255).to(torch.uint8)
    n, records, seen = b.images.shape[1], [], {}
    for i in range(x.shape[0]):
        step, label = i // n, int(y[i])
        j = seen[step, label] = seen.get((step, label), -1) + 1
        rel = f"{b.classes[label]}/step{step}_{j}.png"
        (path / b.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8[i, 0].numpy()).save(path / rel)
        records.append({"file": rel, "index": i, "label": label})
    if manifest:
        (path / "manifest.json").write_text(json.dumps(
            {"classes": b.classes, "steps": b.steps, "lrs": b.lrs.tolist(), "images": records}))


@pytest.mark.parametrize("kind", ["pt", "npz", "folder+manifest", "folder"])
def test_every_format_scores_like_the_bundle(bundle, tmp_path, kind):
    data = toy_data()
    path = tmp_path / {"pt": "s.pt", "npz": "s.npz"}.get(kind, "set")
    extra = {}
    if kind == "pt":
        write_pt(bundle, path)
    elif kind == "npz":
        write_npz(bundle, path)
    else:
        write_folder(bundle, path, manifest=kind == "folder+manifest")
        if kind == "folder":
            extra = {"train_lr": float(bundle.lrs.mean())}  # no manifest: no learned rates
    loaded = load_image_set(path)
    assert loaded.images.shape[-3:] == (1, 8, 8) and loaded.labels.numel() == 12
    want = evaluate_bundle(bundle, data=data, **SETTINGS, **extra)
    got = evaluate_set(path, data=data, **SETTINGS, **extra)
    assert got.kind == ("imagefolder" if "folder" in kind else kind)
    assert got.primary.accuracies == want.primary.accuracies
    assert got.settings["train_lr"] == want.settings["train_lr"]


def test_a_folder_is_read_in_step_major_order(bundle, tmp_path):
    write_folder(bundle, tmp_path / "f", manifest=False)
    s = load_image_set(tmp_path / "f")
    assert s.images.shape == (2, 6, 1, 8, 8)
    assert s.labels.tolist() == bundle.labels.tolist()
    assert s.mean == (0.0,) and s.std == (1.0,)  # [0, 1] pixels, normalised at evaluation


def test_other_normalisation_is_converted_and_reported(bundle, tmp_path):
    write_npz(bundle, tmp_path / "s.npz", mean=(0.3,), std=(0.6,))
    got = evaluate_set(tmp_path / "s.npz", data=toy_data(), **SETTINGS)
    want = evaluate_bundle(bundle, data=toy_data(), **SETTINGS)
    assert any("re-normalised" in n and "(0.3)" in n for n in got.notes)
    assert got.primary.accuracies == pytest.approx(want.primary.accuracies, abs=0.05)


def test_set_errors(bundle, tmp_path):
    write_npz(bundle, tmp_path / "s.npz")
    with pytest.raises(ConfigError, match="--dataset"):
        evaluate_set(tmp_path / "s.npz")
    with pytest.raises(ConfigError, match="--protocol train"):
        evaluate_set(tmp_path / "s.npz", data=toy_data(), protocol="replay")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageSetError, match="not a readable .npz"):
        load_image_set(tmp_path / "bad.npz")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(ImageSetError, match="not a readable .pt"):
        load_image_set(tmp_path / "bad.pt")
    with pytest.raises(ImageSetError, match="no such image set"):
        load_image_set(tmp_path / "missing.pt")
    torch.save({"images": torch.zeros(3, 1, 8, 8)}, tmp_path / "nolabels.pt")
    with pytest.raises(ImageSetError, match="labels"):
        load_image_set(tmp_path / "nolabels.pt")
    torch.save({"images": torch.zeros(3, 1, 5, 5), "labels": torch.zeros(3, dtype=torch.long)},
               tmp_path / "small.pt")
    with pytest.raises(ConfigError, match="1x5x5 images but toy's are 1x8x8"):
        evaluate_set(tmp_path / "small.pt", data=toy_data(), **SETTINGS)
