"""Bundle round-trips, and one clear error for anything that is not a valid bundle."""

import json
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
    with pytest.raises(BundleFormatError, match="not a readable"):
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
