"""Bundle round-trips, and one clear error for anything that is not a valid bundle."""

import dataclasses
import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file

from ddcli.bundle import FORMAT_VERSION, Bundle
from ddcli.errors import BundleFormatError


def make_bundle(steps=2, classes=3, k=2, epochs=2, with_init=True) -> Bundle:
    g = torch.Generator().manual_seed(0)
    n = classes * k
    return Bundle(
        images=torch.randn(steps, n, 1, 8, 8, generator=g),
        labels=torch.arange(classes).repeat_interleave(k).expand(steps, n).contiguous(),
        raw_lrs=torch.randn(steps * epochs, generator=g),
        dataset="mnist",
        classes=[f"c{i}" for i in range(classes)],
        mean=(0.1307,),
        std=(0.3081,),
        model={"name": "mlp", "in_channels": 1, "num_classes": classes, "image_size": 8},
        init_mode="fixed" if with_init else "random",
        seed=7,
        epochs=epochs,
        config={"synth": {"steps": steps}},
        summary={"iterations": 3},
        init_params={"fc.weight": torch.randn(3, 4, generator=g)} if with_init else None,
    )


def test_roundtrip_is_exact(tmp_path):
    b = make_bundle()
    path = b.save(tmp_path / "b.safetensors")
    c = Bundle.load(path)
    assert torch.equal(c.images, b.images) and torch.equal(c.labels, b.labels)
    assert torch.equal(c.raw_lrs, b.raw_lrs)
    assert torch.equal(c.init_params["fc.weight"], b.init_params["fc.weight"])
    for f in ("dataset", "classes", "mean", "std", "model", "init_mode", "seed", "epochs",
              "config", "summary", "init_scheme"):
        assert getattr(c, f) == getattr(b, f), f
    assert c.steps == 2 and c.images_per_class == 2 and c.input_shape == (1, 8, 8)
    torch.testing.assert_close(c.lrs, torch.nn.functional.softplus(b.raw_lrs))
    images, labels = c.flat()
    assert images.shape == (12, 1, 8, 8) and labels.tolist() == [0, 0, 1, 1, 2, 2] * 2


def test_random_bundle_has_no_init(tmp_path):
    c = Bundle.load(make_bundle(with_init=False).save(tmp_path / "r.safetensors"))
    assert c.init_params is None and c.init_mode == "random"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "b.safetensors"
    make_bundle().save(path)
    make_bundle(steps=3).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]
    assert Bundle.load(path).steps == 3


@pytest.mark.parametrize("cut", [0, 5, 100, -10])
def test_truncated_file(tmp_path, cut):
    path = make_bundle().save(tmp_path / "b.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(BundleFormatError, match="not a readable safetensors file"):
        Bundle.load(path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a bundle at all" * 10)
    with pytest.raises(BundleFormatError, match="not a ddcli bundle"):
        Bundle.load(junk)
    with pytest.raises(BundleFormatError, match="no such bundle"):
        Bundle.load(tmp_path / "missing.safetensors")
    with pytest.raises(BundleFormatError, match="folder"):
        Bundle.load(tmp_path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(BundleFormatError, match="not a ddcli bundle"):
        Bundle.load(path)


def _rewrite_metadata(path, **changes):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_newer_format_version_is_refused(tmp_path):
    path = make_bundle().save(tmp_path / "b.safetensors")
    _rewrite_metadata(path, format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(BundleFormatError, match="newer than this ddcli"):
        Bundle.load(path)


def test_inconsistent_bundle_is_refused(tmp_path):
    path = make_bundle().save(tmp_path / "b.safetensors")
    _rewrite_metadata(path, epochs="5")
    with pytest.raises(BundleFormatError, match="rates but 2 steps x 5 epochs"):
        Bundle.load(path)
    path = make_bundle().save(tmp_path / "c.safetensors")
    _rewrite_metadata(path, classes="not json")
    with pytest.raises(BundleFormatError, match="malformed metadata"):
        Bundle.load(path)


# --- format version 2: soft labels, pixel space, provenance -------------------------------

ZCA_SPACE = {"kind": "zca", "eps": 0.1, "dataset": "cifar10", "data_sha256": "ab" * 32,
             "fitted_on": "cifar10 train, [0, 1] pixels (uint8 / 255)"}


def soft_bundle(**changes) -> Bundle:
    b = make_bundle()
    g = torch.Generator().manual_seed(1)
    soft = torch.nn.functional.one_hot(b.labels, 3).float() + 0.5 * torch.rand(2, 6, 3, generator=g)
    return dataclasses.replace(b, soft_labels=soft, provenance={"git": "abc123", "threads": 2},
                               **changes)


def test_v2_roundtrip_keeps_soft_labels_space_and_provenance(tmp_path):
    b = soft_bundle(images=torch.randn(2, 6, 1, 8, 8), mean=(0.0,), std=(1.0,),
                    pixel_space=dict(ZCA_SPACE))
    c = Bundle.load(b.save(tmp_path / "b.safetensors"))
    assert torch.equal(c.soft_labels, b.soft_labels) and c.has_soft_labels
    assert c.pixel_space == ZCA_SPACE and c.pixel_space_record == ZCA_SPACE
    assert c.provenance == {"git": "abc123", "threads": 2}
    assert torch.equal(c.labels, b.labels)  # hard labels stay: the slots' classes


def test_version_1_bundle_loads_unchanged(tmp_path):
    """A file exactly as the version-1 writer made it (no v2 keys) still loads."""
    b = make_bundle()
    meta = {
        "format": "ddcli-bundle", "format_version": "1", "ddcli_version": "0.1.0",
        "dataset": "mnist", "classes": json.dumps(b.classes), "mean": "[0.1307]",
        "std": "[0.3081]", "input_shape": "[1, 8, 8]", "model": json.dumps(b.model),
        "init_scheme": "xavier", "init_mode": "fixed", "seed": "7", "steps": "2",
        "epochs": "2", "images_per_class": "2", "config": "{}", "summary": "{}", "extra": "{}",
    }
    tensors = {"images": b.images, "labels": b.labels, "raw_lrs": b.raw_lrs,
               "init.fc.weight": b.init_params["fc.weight"]}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata=meta)
    c = Bundle.load(path)
    assert torch.equal(c.images, b.images) and torch.equal(c.raw_lrs, b.raw_lrs)
    assert c.soft_labels is None and c.pixel_space is None and c.provenance == {}
    assert c.pixel_space_record == {"kind": "normalized", "mean": [0.1307], "std": [0.3081]}
    assert FORMAT_VERSION == 2


def test_a_stored_normalized_record_loads_as_the_default(tmp_path):
    c = Bundle.load(make_bundle().save(tmp_path / "b.safetensors"))
    assert c.pixel_space is None  # None is the one in-memory form of "normalized"
    assert c.pixel_space_record["kind"] == "normalized"


def test_label_probs_and_logits():
    b = soft_bundle()
    probs = b.label_probs()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(probs, b.soft_labels / b.soft_labels.sum(-1, keepdim=True))
    torch.testing.assert_close(b.label_logits().softmax(-1), probs)
    assert b.flat_label_probs().shape == (12, 3) and b.flat_label_logits().shape == (12, 3)
    torch.testing.assert_close(b.flat_label_probs()[7], probs[1, 1])
    hard = make_bundle()
    assert not hard.has_soft_labels
    assert torch.equal(hard.label_probs(), torch.nn.functional.one_hot(hard.labels, 3).float())
    logits = hard.label_logits()
    assert torch.isfinite(logits).all() and logits.max() == 0  # log 1, and clamped log 0
    assert logits.min() == pytest.approx(math.log(1e-8))


def test_class_major_order_covers_every_step():
    b = make_bundle(steps=3, classes=3, k=2)
    order = b.class_major_order()
    _, labels = b.flat()
    assert sorted(order.tolist()) == list(range(18))
    assert labels[order].tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # inside a class, step 0's images first: flat positions 0, 1 (step 0), 6, 7, 12, 13
    assert order[:6].tolist() == [0, 1, 6, 7, 12, 13]


@pytest.mark.parametrize("change, message", [
    (dict(soft_labels=torch.ones(2, 6, 4)), "soft labels must be float"),
    (dict(soft_labels=-torch.ones(2, 6, 3)), "non-negative"),
    (dict(soft_labels=torch.zeros(2, 6, 3)), "sums to 0"),
    (dict(pixel_space={"kind": "pca"}), "pixel_space"),
    (dict(pixel_space={"kind": "zca", "eps": 0.1}), "dataset"),
    (dict(pixel_space={"kind": "normalized", "mean": [0.5], "std": [0.5]}), "differ"),
    (dict(pixel_space=dict(ZCA_SPACE)), "mean/std must be 0/1"),
    (dict(provenance=["not", "a", "dict"]), "provenance"),
])
def test_bad_v2_content_is_refused(tmp_path, change, message):
    with pytest.raises(BundleFormatError, match=message):
        dataclasses.replace(make_bundle(), **change).save(tmp_path / "b.safetensors")
