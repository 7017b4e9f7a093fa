"""Image sets from other tools (.pt, .npz, ImageFolder) score like the bundle they hold."""

import dataclasses
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


BARE_PT = pytest.mark.filterwarnings(  # bare .pt files on purpose; the warning has its own test
    "ignore::ddcli.evaluate._sets.PixelSpaceWarning")


@BARE_PT
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


@BARE_PT
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


# --- pixel-space records and evaluator exports -------------------------------------------

def test_a_pt_without_a_pixel_space_record_warns_loudly(bundle, tmp_path):
    from ddcli.evaluate._sets import PixelSpaceWarning

    write_pt(bundle, tmp_path / "bare.pt")  # the classic released set: tensors only
    with pytest.warns(PixelSpaceWarning, match="ASSUMED to be normalised"):
        s = load_image_set(tmp_path / "bare.pt")
    assert s.pixel_space is None and s.mean is None
    assert len(s.warnings) == 1 and "0.2023/0.1994/0.2010" in s.warnings[0]
    x, y = bundle.flat()
    np.savez(tmp_path / "bare.npz", images=x.numpy(), labels=y.numpy())
    with pytest.warns(PixelSpaceWarning):
        load_image_set(tmp_path / "bare.npz")


@pytest.mark.parametrize("fmt, name", [("pt", "s.pt"), ("npz", "s.npz")])
def test_dd_exports_record_their_space_and_soft_labels(bundle, tmp_path, fmt, name, recwarn):
    from ddcli.export import export

    soft = torch.nn.functional.one_hot(bundle.labels, 3).float() + 0.25
    b = dataclasses.replace(bundle, soft_labels=soft)
    export(b, fmt, tmp_path / name)
    s = load_image_set(tmp_path / name)
    assert not [w for w in recwarn if "pixel space" in str(w.message)] and s.warnings == []
    assert s.mean == tuple(b.mean) and s.std == tuple(b.std)
    assert s.pixel_space == b.pixel_space_record and s.classes == b.classes
    torch.testing.assert_close(s.soft_labels, b.soft_labels)  # as learned, mass included
    assert s.images.shape == b.images.shape  # steps kept
    got = evaluate_set(tmp_path / name, data=toy_data(), **SETTINGS)
    want = evaluate_bundle(b, data=toy_data(), **SETTINGS)
    assert got.primary.accuracies == want.primary.accuracies


def test_evaluator_exports_load_with_their_manifest(tmp_path, recwarn):
    from ddcli.export import export

    g = torch.Generator().manual_seed(0)
    cifar = Bundle(images=torch.randn(2, 10, 3, 8, 8, generator=g),
                   labels=torch.arange(10).repeat(2, 1), raw_lrs=torch.full((2,), -4.0),
                   dataset="cifar10", classes=[f"k{c}" for c in range(10)],
                   mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                   model={"name": "mlp"}, epochs=1)
    order = cifar.class_major_order()
    for fmt, path in (("ddranking", tmp_path / "d"), ("mtt", tmp_path / "m"),
                      ("dc", tmp_path / "res.pt")):
        export(cifar, fmt, path)
        s = load_image_set(path)
        assert s.kind == fmt and s.dataset == "cifar10" and s.warnings == []
        assert s.images.shape == (1, 20, 3, 8, 8) and s.std == (0.2023, 0.1994, 0.2010)
        assert s.labels.reshape(-1).tolist() == cifar.flat()[1][order].tolist()
        # back in ddcli's normalisation, the images are the bundle's, class-major
        x01 = s.images[0] * torch.tensor(s.std).view(3, 1, 1) + torch.tensor(s.mean).view(3, 1, 1)
        back = (x01 - torch.tensor(cifar.mean).view(3, 1, 1)) / torch.tensor(cifar.std).view(3, 1, 1)
        torch.testing.assert_close(back, cifar.flat()[0][order], atol=1e-5, rtol=0)
    assert not [w for w in recwarn if "pixel space" in str(w.message)]
    (tmp_path / "d" / "manifest.json").unlink()  # a bare DD-Ranking folder: assumed space
    from ddcli.evaluate._sets import PixelSpaceWarning

    with pytest.warns(PixelSpaceWarning):
        load_image_set(tmp_path / "d")


def test_a_one_step_dc_export_scores_like_the_bundle(bundle, tmp_path):
    """One step: class-major is the bundle's own order, so the nets see the same set."""
    from ddcli.export import export

    one = dataclasses.replace(bundle, images=bundle.images[:1], labels=bundle.labels[:1],
                              raw_lrs=bundle.raw_lrs[:2], init_params=None, init_mode="random")
    report = export(one, "dc", tmp_path / "res.pt")
    assert any("no toy normalisation" in w for w in report.warnings)
    got = evaluate_set(tmp_path / "res.pt", data=toy_data(), **SETTINGS, train_lr=0.03)
    want = evaluate_bundle(one, data=toy_data(), **SETTINGS, train_lr=0.03)
    assert got.kind == "dc" and got.primary.accuracies == want.primary.accuracies
