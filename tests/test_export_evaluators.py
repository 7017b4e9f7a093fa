"""`dd export --format ddranking|mtt|dc`: layout, class-major order, every step, pixel space."""

import dataclasses
import hashlib
import json

import kornia
import pytest
import torch
from typer.testing import CliRunner

from ddcli import Bundle
from ddcli.cli import app
from ddcli.data import load_dataset
from ddcli.data.zca import zca_dataset
from ddcli.errors import ExportError
from ddcli.export import export

from tests._pixels import folder_dataset, uint8_data, unit, uint8_images

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # ddcli's
EVAL_STD = (0.2023, 0.1994, 0.2010)  # DC, MTT and DD-Ranking's CIFAR-10 std
runner = CliRunner()


def cifar_bundle(steps=3, k=2, classes=10, soft=False, seed=0, **changes) -> Bundle:
    g = torch.Generator().manual_seed(seed)
    n = classes * k
    labels = torch.arange(classes).repeat_interleave(k).repeat(steps, 1)
    b = Bundle(
        images=torch.randn(steps, n, 3, 8, 8, generator=g), labels=labels,
        raw_lrs=torch.randn(steps * 2, generator=g) * 0.3 - 4, dataset="cifar10",
        classes=[f"class{c}" for c in range(classes)], mean=CIFAR_MEAN, std=CIFAR_STD,
        model={"name": "convnet", "in_channels": 3, "num_classes": classes, "image_size": 8},
        init_mode="random", epochs=2, provenance={"git": "deadbeef"},
        soft_labels=(torch.nn.functional.one_hot(labels, classes).float()
                     + torch.rand(steps, n, classes, generator=g) * 0.2) if soft else None,
    )
    return dataclasses.replace(b, **changes)


def eval_space(images, mean=CIFAR_MEAN, std=CIFAR_STD, to_std=EVAL_STD):
    """The same pixels normalised with the evaluators' CIFAR statistics."""
    x01 = images * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x01 - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(to_std).view(3, 1, 1)


def test_ddranking_layout_order_and_pixel_space(tmp_path):
    b = cifar_bundle()
    path = b.save(tmp_path / "b.safetensors")
    report = export(path, "ddranking", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["images.pt", "labels.pt", "lr.pt",
                                                     "manifest.json"]
    images = torch.load(out / "images.pt", weights_only=True)
    labels = torch.load(out / "labels.pt", weights_only=True)
    lr = torch.load(out / "lr.pt", weights_only=True)
    assert images.dtype == torch.float32 and images.shape == (60, 3, 8, 8)
    assert labels.dtype == torch.int64 and labels.tolist() == [c for c in range(10) for _ in range(6)]
    assert lr.dim() == 0 and lr.item() == pytest.approx(b.lrs.mean().item())
    m = json.loads((out / "manifest.json").read_text())
    assert m == report.manifest and m["format"] == "ddcli-ddranking"
    assert m["ipc"] == 6 and m["evaluator_dataset"] == "CIFAR10" and m["images"] == 60
    assert m["pixel_space"] == {"kind": "normalized", "mean": list(CIFAR_MEAN),
                                "std": list(EVAL_STD)}
    assert m["source"] == {"path": str(path.absolute()),
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert m["lrs"] == pytest.approx(b.lrs.tolist()) and m["provenance"] == {"git": "deadbeef"}
    assert "class-major" in m["order"] and m["steps"] == 3
    # every step is there, class-major, converted through [0, 1] pixels
    flat, flat_labels = b.flat()
    order = torch.tensor(m["source_index"])
    assert sorted(order.tolist()) == list(range(60))
    assert torch.equal(flat_labels[order], labels)
    torch.testing.assert_close(images, eval_space(flat[order]), atol=1e-5, rtol=0)
    # class 3's images: step 0's two first, then step 1's, then step 2's
    assert order[18:24].tolist() == [6, 7, 26, 27, 46, 47]


def test_soft_labels_are_logits_for_ddranking_and_mtt(tmp_path):
    b = cifar_bundle(soft=True)
    order = b.class_major_order()
    for fmt, name in (("ddranking", "labels.pt"), ("mtt", "labels_best.pt")):
        export(b, fmt, tmp_path / fmt)
        logits = torch.load(tmp_path / fmt / name, weights_only=True)
        assert logits.shape == (60, 10) and logits.dtype == torch.float32
        torch.testing.assert_close(logits.softmax(-1), b.flat_label_probs()[order])
        assert json.loads((tmp_path / fmt / "manifest.json").read_text())["soft_labels"] is True


def test_mtt_layout(tmp_path):
    b = cifar_bundle(steps=2, k=1)
    export(b, "mtt", tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["images_best.pt", "labels_best.pt", "lr_best.pt", "manifest.json"]
    images = torch.load(tmp_path / "m" / "images_best.pt", weights_only=True)
    order = b.class_major_order()
    torch.testing.assert_close(images, eval_space(b.flat()[0][order]), atol=1e-5, rtol=0)
    assert torch.load(tmp_path / "m" / "lr_best.pt", weights_only=True).dim() == 0


def test_dc_layout_and_manifest(tmp_path):
    b = cifar_bundle(soft=True)
    report = export(b, "dc", tmp_path / "res.pt")
    obj = torch.load(tmp_path / "res.pt", weights_only=True)
    images, labels = obj["data"][-1]
    order = b.class_major_order()
    torch.testing.assert_close(images, eval_space(b.flat()[0][order]), atol=1e-5, rtol=0)
    assert labels.dtype == torch.int64 and labels.tolist() == b.flat()[1][order].tolist()
    sidecar = json.loads((tmp_path / "res.pt.manifest.json").read_text())
    assert sidecar == obj["ddcli_manifest"] == report.manifest
    assert sidecar["format"] == "ddcli-dc" and sidecar["soft_labels"] is False
    assert sidecar["source"] == {"path": None, "sha256": None}  # an in-memory bundle
    assert any("hard labels" in w for w in report.warnings)


def test_dc_uses_dcs_own_statistics(tmp_path):
    fashion = cifar_bundle(steps=1, k=1, dataset="fashion-mnist", mean=(0.2860,), std=(0.3530,),
                           images=torch.randn(1, 10, 1, 8, 8))
    export(fashion, "dc", tmp_path / "f.pt")
    images = torch.load(tmp_path / "f.pt", weights_only=True)["data"][0][0]
    want = ((fashion.flat()[0] * 0.3530 + 0.2860) - 0.2861) / 0.3530  # DC: mean 0.2861
    torch.testing.assert_close(images, want, atol=1e-6, rtol=0)
    assert not torch.equal(images, fashion.flat()[0])


def test_an_evaluator_without_the_dataset_keeps_the_space_and_says_so(tmp_path):
    b = cifar_bundle(steps=1, k=1, dataset="mnist", mean=(0.1307,), std=(0.3081,),
                     images=torch.randn(1, 10, 1, 8, 8))
    report = export(b, "mtt", tmp_path / "m")
    assert any("no mnist normalisation" in w for w in report.warnings)
    assert report.manifest["pixel_space"]["std"] == [0.3081]
    images = torch.load(tmp_path / "m" / "images_best.pt", weights_only=True)
    assert torch.equal(images, b.flat()[0][b.class_major_order()])


@pytest.mark.parametrize("changes", [
    dict(dataset="mnist", mean=(0.1307,), std=(0.3081,), images=torch.randn(1, 10, 1, 8, 8)),
    dict(dataset="svhn"),
])
def test_ddranking_refuses_what_it_cannot_evaluate(tmp_path, changes):
    b = cifar_bundle(steps=1, k=1, **changes)
    with pytest.raises(ExportError, match="DD-Ranking evaluates only CIFAR-10/100"):
        export(b, "ddranking", tmp_path / "d")
    assert not (tmp_path / "d").exists()
    r = runner.invoke(app, ["export", str(b.save(tmp_path / "b.safetensors")), "-f", "ddranking"])
    assert r.exit_code == 2 and r.stderr.startswith("error: DD-Ranking evaluates only")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_folder_export_replaces_only_an_earlier_export(tmp_path):
    export(cifar_bundle(), "ddranking", tmp_path / "d")
    export(cifar_bundle(steps=1), "ddranking", tmp_path / "d")
    assert torch.load(tmp_path / "d" / "images.pt", weights_only=True).shape[0] == 20
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ExportError, match="not an earlier ddcli export"):
        export(cifar_bundle(), "mtt", tmp_path / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine"]


def test_cli_writes_beside_the_bundle(tmp_path):
    path = cifar_bundle().save(tmp_path / "b.safetensors")
    r = runner.invoke(app, ["export", str(path), "-f", "ddranking", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["path"] == str(tmp_path / "b-ddranking") and rec["ipc"] == 6
    assert rec["pixel_space"]["std"] == list(EVAL_STD)
    r = runner.invoke(app, ["export", str(path), "-f", "dc"])
    assert r.exit_code == 0 and (tmp_path / "b-dc.pt").is_file()


# --- ZCA bundles --------------------------------------------------------------------------

def zca_bundle(white, steps=2):
    """Real whitened training images in the bundle layout: steps x (one per class)."""
    idx = torch.stack([(white.train_y == c).nonzero().flatten()[:steps] for c in range(3)]).T
    return Bundle(images=white.train_x[idx.reshape(-1)].reshape(steps, 3, 3, 8, 8),
                  labels=torch.arange(3).repeat(steps, 1), raw_lrs=torch.full((steps,), -4.0),
                  dataset=white.name, classes=white.classes, mean=white.mean, std=white.std,
                  model={"name": "mlp", "in_channels": 3, "num_classes": 3, "image_size": 8},
                  init_mode="random", pixel_space=white.pixel_space), idx.reshape(-1)


def test_a_zca_export_equals_kornias_rewhitening(tmp_path):
    """What the evaluator does (kornia ZCA on [0, 1] training images) gives the exported tensors."""
    white = zca_dataset(uint8_data(name="cifar10", classes=3), cache_dir=tmp_path / "cache")
    b, idx = zca_bundle(white)
    report = export(b, "ddranking", tmp_path / "d")
    images = torch.load(tmp_path / "d" / "images.pt", weights_only=True)
    x01 = unit(uint8_images(60)[0])  # the training images as ToTensor gives them
    rewhitened = kornia.enhance.ZCAWhitening(eps=0.1).fit(x01)(x01)
    order = b.class_major_order()
    assert torch.equal(images, rewhitened[idx][order])
    space = report.manifest["pixel_space"]
    assert space["kind"] == "zca" and space["eps"] == 0.1
    assert space["data_sha256"] == white.pixel_space["data_sha256"]
    assert "use_zca=True" in report.manifest["normalize"]


def test_zca_bundles_unwhiten_for_pngs_and_dc(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLI_ZCA_CACHE", str(tmp_path / "cache"))
    name = folder_dataset(tmp_path / "tree")
    data = load_dataset(name)
    white = zca_dataset(data)
    b, idx = zca_bundle(white)
    report = export(b, "imagefolder", tmp_path / "png")
    assert report.clipped_pixels == 0
    from ddcli.evaluate import load_image_set

    back = load_image_set(tmp_path / "png")  # [0, 1] pixels from the PNGs
    from ddcli.data.zca import unit_pixels

    want = unit_pixels(data.train_x, data)[idx]  # the folder loader's order, uint8 / 255
    torch.testing.assert_close(back.flat()[0], want, atol=0, rtol=0)  # lossless round trip
    # DC has no ZCA: a known dataset is un-whitened and normalised with DC's statistics
    import ddcli.data.zca as zca_module

    cifar = dataclasses.replace(b, dataset="cifar10",
                                pixel_space=dict(b.pixel_space, dataset="cifar10"))
    monkeypatch.setattr(zca_module, "zca_from_record", lambda *a, **k: white.whitening)
    report = export(cifar, "dc", tmp_path / "res.pt")
    images = torch.load(tmp_path / "res.pt", weights_only=True)["data"][0][0]
    x01 = want[cifar.class_major_order()]
    torch.testing.assert_close(
        images, (x01 - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(EVAL_STD).view(3, 1, 1),
        atol=2e-4, rtol=0)
    assert any("has no ZCA" in w for w in report.warnings)


# --- DD-Ranking's own code, when installed --------------------------------------------------

def test_ddrankings_own_code_reads_the_export(tmp_path):
    ddranking = pytest.importorskip("ddranking")
    from ddranking.utils import TensorDataset, build_model

    for soft in (False, True):
        export(cifar_bundle(k=1, soft=soft), "ddranking", tmp_path / f"d{soft}")
        images = torch.load(tmp_path / f"d{soft}" / "images.pt", weights_only=True)
        labels = torch.load(tmp_path / f"d{soft}" / "labels.pt", weights_only=True)
        ds = TensorDataset(images, labels)
        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
        net = build_model("ConvNet-3", num_classes=10, im_size=(8, 8), device="cpu")
        out = net(ddranking.DSA({"flip": 0.5, "rotate": 15.0, "saturation": 2.0,
                                 "brightness": 1.0, "contrast": 0.5, "scale": 1.2,
                                 "crop": 0.125, "cutout": 0.5})(x))
        assert out.shape == (30, 10)
        if soft:
            loss = ddranking.SoftCrossEntropyLoss(temperature=1.0)(out, y)
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        assert torch.isfinite(loss)
