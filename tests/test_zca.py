"""ZCA whitening: kornia's own numbers, round trips, the on-disk cache, and ZCA datasets."""

import dataclasses

import kornia
import pytest
import torch

from ddcli import Bundle
from ddcli.errors import BundleFormatError
from ddcli.data import load_dataset
from ddcli.data.zca import (
    ZCAError, data_sha256, fit_zca, normalized_dataset, to_unit_pixels, unit_pixels,
    zca_dataset, zca_from_record,
)

from tests._pixels import folder_dataset, uint8_data, uint8_images, unit


def kornia_zca(x01):
    return kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True).fit(x01)


def test_fit_equals_kornias_own_zca_bit_for_bit():
    x01 = unit(uint8_images(50)[0])
    z, k = fit_zca(x01, cache_dir=False), kornia_zca(x01)
    assert z.eps == 0.1 and z.shape == (3, 8, 8)
    assert torch.equal(z.apply(x01), k(x01))
    w = k(x01)
    assert torch.equal(z.invert(w), k.inverse_transform(w))


def test_apply_then_invert_is_the_identity():
    x01 = unit(uint8_images(50)[0])
    z = fit_zca(x01, cache_dir=False)
    torch.testing.assert_close(z.invert(z.apply(x01)), x01, atol=2e-5, rtol=0)
    y = torch.rand(2, 5, 3, 8, 8)  # any leading dims, e.g. (steps, n, C, H, W)
    torch.testing.assert_close(z.invert(z.apply(y)), y, atol=2e-5, rtol=0)
    with pytest.raises(ZCAError, match="fitted on"):
        z.apply(torch.rand(2, 1, 8, 8))


def test_the_cache_returns_the_same_bits_without_refitting(tmp_path, monkeypatch):
    x01 = unit(uint8_images(40)[0])
    first = fit_zca(x01, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and first.data_sha256[:24] in files[0].name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    monkeypatch.setattr(kornia.enhance.ZCAWhitening, "fit", lambda *a: pytest.fail("refit"))
    again = fit_zca(x01, cache_dir=tmp_path)
    assert torch.equal(again.apply(x01), first.apply(x01))
    assert torch.equal(again.invert(x01), first.invert(x01))
    monkeypatch.undo()
    other = fit_zca(x01[:30], cache_dir=tmp_path)  # other data: another entry
    assert other.data_sha256 != first.data_sha256 and len(list(tmp_path.iterdir())) == 2
    files[0].write_bytes(b"corrupt")  # a damaged entry is re-fitted, not trusted
    assert torch.equal(fit_zca(x01, cache_dir=tmp_path).apply(x01), first.apply(x01))


def test_unit_pixels_recover_uint8_over_255_exactly():
    data = uint8_data()
    x01 = unit(uint8_images(60)[0])
    assert not torch.equal(data.denormalize(data.train_x), x01)  # float rounding
    assert torch.equal(unit_pixels(data.train_x, data), x01)


def test_zca_dataset_matches_kornia_and_goes_back(tmp_path):
    data = uint8_data()
    white = zca_dataset(data, cache_dir=tmp_path)
    k = kornia_zca(unit(uint8_images(60)[0]))
    assert torch.equal(white.train_x, k(unit(uint8_images(60)[0])))
    assert torch.equal(white.test_x, k(unit(uint8_images(30, seed=1)[0])))
    space = white.pixel_space_record
    assert space["kind"] == "zca" and space["eps"] == 0.1 and space["dataset"] == "toy"
    assert space["data_sha256"] == data_sha256(unit(uint8_images(60)[0]))
    assert white.mean == (0.0,) * 3 and white.std == (1.0,) * 3
    torch.testing.assert_close(white.denormalize(white.train_x), unit(uint8_images(60)[0]),
                               atol=2e-5, rtol=0)
    assert zca_dataset(white) is white
    back = normalized_dataset(white)
    assert back.mean == data.mean and back.pixel_space is None
    torch.testing.assert_close(back.train_x, data.train_x, atol=2e-4, rtol=0)


def test_zca_from_record_refits_and_checks_the_data(tmp_path):
    root = tmp_path / "tree"
    name = folder_dataset(root)
    data = load_dataset(name)
    white = zca_dataset(data, cache_dir=tmp_path / "cache")
    again = zca_from_record(white.pixel_space_record, cache_dir=tmp_path / "cache")
    assert torch.equal(again.apply(unit_pixels(data.train_x, data)), white.train_x)
    wrong = dict(white.pixel_space_record, data_sha256="0" * 64)
    with pytest.raises(ZCAError, match="hashes to"):
        zca_from_record(wrong, cache_dir=tmp_path / "cache")


def test_to_unit_pixels_undoes_either_space(tmp_path):
    data = uint8_data()
    white = zca_dataset(data, cache_dir=tmp_path)
    x01 = unit(uint8_images(60)[0])
    torch.testing.assert_close(to_unit_pixels(data.train_x, data.pixel_space_record), x01,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(
        to_unit_pixels(white.train_x, white.pixel_space_record, zca=white.whitening), x01,
        atol=2e-5, rtol=0)


def test_a_zca_bundle_saves_and_loads(tmp_path):
    white = zca_dataset(uint8_data(), cache_dir=tmp_path)
    b = Bundle(images=white.train_x[:6].reshape(2, 3, 3, 8, 8),
               labels=torch.arange(3).repeat(2, 1), raw_lrs=torch.zeros(2), dataset="toy",
               classes=white.classes, mean=white.mean, std=white.std, model={"name": "mlp"},
               pixel_space=white.pixel_space)
    c = Bundle.load(b.save(tmp_path / "z.safetensors"))
    assert c.pixel_space_record == white.pixel_space_record
    assert torch.equal(c.images, b.images)
    with pytest.raises(BundleFormatError, match="0/1"):
        dataclasses.replace(b, mean=(0.5,) * 3).validate()
