"""ZCA whitening of [0, 1] pixels, bit-compatible with ``kornia.enhance.ZCAWhitening``.

KIP, MTT, RaT-BPTT and DD-Ranking evaluate "ZCA" sets in one space: kornia's
``ZCAWhitening(eps=0.1)`` fitted on the training images as ``ToTensor`` gives them
(``uint8 / 255``), and applied to train, test and synthetic images alike. The fit and the
transform here are kornia's own module, so a set whitened by ddcli and one whitened by
those tools hold the same numbers (a test checks ``torch.equal`` with kornia).

A fit over 50,000 CIFAR images takes tens of seconds (a 3072 x 3072 covariance and its
SVD), so fits are cached on disk, keyed by the sha256 of the exact [0, 1] training
tensor and eps, and written atomically. A bundle records only its ZCA's metadata
(``record``); eval, export and viz re-fit from the dataset (a cache hit) when they need
the transform, and refuse data whose hash differs.

Example:
    >>> from ddcli.data import load_dataset
    >>> from ddcli.data.zca import zca_dataset
    >>> data = load_dataset("cifar10", root="/data")  # doctest: +SKIP
    >>> white = zca_dataset(data, eps=0.1)  # doctest: +SKIP
    >>> white.pixel_space["kind"], white.mean  # doctest: +SKIP
    ('zca', (0.0, 0.0, 0.0))
    >>> x01 = white.denormalize(white.train_x[:8])  # back to [0, 1] pixels  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import kornia
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from ddcli.data._realdata import RealData, check_pixel_space, normalized_space
from ddcli.errors import DDError
from ddcli.infra import io as _io
from ddcli.infra.io import user_cache_dir

DEFAULT_EPS = 0.1  # what KIP, MTT and DD-Ranking use
CACHE_ENV = "DDCLI_ZCA_CACHE"
_CACHE_FORMAT = "ddcli-zca"


class ZCAError(DDError):
    """A ZCA transform can't be rebuilt: its data is missing or differs from the fitted data."""


class ZCA:
    """A fitted ZCA whitening of [0, 1] images of one shape (a wrapped kornia module).

    Attributes:
        eps: the eigenvalue offset; kornia's ``ZCAWhitening(eps=...)``.
        shape: the image shape (C, H, W) it was fitted on.
        data_sha256: hash of the exact [0, 1] tensor it was fitted on (``data_sha256``).
        module: the fitted ``kornia.enhance.ZCAWhitening`` (``compute_inv=True``).
    """

    def __init__(self, module: kornia.enhance.ZCAWhitening, shape: tuple[int, int, int],
                 data_sha256: str) -> None:
        self.module, self.eps = module, float(module.eps)
        self.shape, self.data_sha256 = tuple(int(v) for v in shape), data_sha256

    def apply(self, x01: Tensor) -> Tensor:
        """Whiten [0, 1] images (..., C, H, W); exactly ``module(x01)`` on (N, C, H, W)."""
        flat = self._rows(x01)  # (N, C, H, W)
        with torch.no_grad():
            return self._moved(flat)(flat).reshape(x01.shape)

    def invert(self, z: Tensor) -> Tensor:
        """Whitened images (..., C, H, W) back to [0, 1] pixels (not clipped)."""
        flat = self._rows(z)
        with torch.no_grad():
            return self._moved(flat).inverse_transform(flat).reshape(z.shape)

    def record(self, dataset: str, **extra: Any) -> dict[str, Any]:
        """The pixel-space record a bundle or export stores for this transform."""
        return {"kind": "zca", "eps": self.eps, "dataset": dataset,
                "fitted_on": f"{dataset} train, [0, 1] pixels (uint8 / 255)",
                "data_sha256": self.data_sha256, "shape": list(self.shape),
                "transform": "kornia.enhance.ZCAWhitening(eps=eps) fitted on the [0, 1] "
                             "training images, applied to [0, 1] images",
                "kornia": kornia.__version__, **extra}

    def _rows(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-3:]) != self.shape:
            raise ZCAError(f"this ZCA was fitted on {self.shape} images, got {tuple(x.shape[-3:])}")
        return x.reshape(-1, *self.shape)

    def _moved(self, like: Tensor) -> kornia.enhance.ZCAWhitening:
        m = self.module
        if m.transform_matrix.device != like.device or m.transform_matrix.dtype != like.dtype:
            m = self.module = m.to(device=like.device, dtype=like.dtype)
        return m

    def __repr__(self) -> str:
        return f"ZCA(eps={self.eps}, shape={self.shape}, data_sha256={self.data_sha256[:12]}...)"


def data_sha256(x01: Tensor) -> str:
    """sha256 of a float32 tensor's shape and bytes: which data a ZCA was fitted on."""
    x = x01.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(json.dumps(list(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def zca_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where fits are cached: ``cache_dir``, else ``$DDCLI_ZCA_CACHE``, else ``~/.cache/ddcli/zca``."""
    return user_cache_dir("zca", env=CACHE_ENV, override=cache_dir)


def fit_zca(x01: Tensor, eps: float = DEFAULT_EPS, *,
            cache_dir: str | os.PathLike | None | bool = None) -> ZCA:
    """Fit kornia's ``ZCAWhitening(eps, compute_inv=True)`` on [0, 1] images (N, C, H, W).

    Args:
        x01: the training images in [0, 1] (for bit-compatibility with the tools above,
            ``uint8 / 255`` exactly: see ``unit_pixels``).
        eps: kornia's eps; 0.1 in every ZCA distillation paper.
        cache_dir: folder of cached fits (``zca_cache_dir``); ``False`` fits without one.

    Example:
        >>> z = fit_zca(torch.rand(64, 1, 4, 4), cache_dir=False)
        >>> x = torch.rand(3, 1, 4, 4)
        >>> torch.allclose(z.invert(z.apply(x)), x, atol=1e-4)
        True
    """
    if x01.dim() != 4 or x01.shape[0] < 2:
        raise ZCAError(f"ZCA needs at least 2 images (N, C, H, W), got {tuple(x01.shape)}")
    eps, digest, shape = float(eps), data_sha256(x01), tuple(x01.shape[1:])
    file = None if cache_dir is False else zca_cache_dir(
        None if cache_dir in (None, True) else cache_dir) / f"zca-{digest[:24]}-eps{eps:g}.safetensors"
    if file is not None:
        cached = _load_cached(file, digest, eps, shape)
        if cached is not None:
            return cached
    module = kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)
    module.fit(x01.detach().float())
    zca = ZCA(module, shape, digest)
    if file is not None:
        _save_cached(file, zca)
    return zca


def unit_pixels(x: Tensor, data: RealData) -> Tensor:
    """A RealData's images ``x`` as [0, 1] pixels, snapped to ``k / 255`` when they are.

    The loaders store ``(uint8 / 255 - mean) / std`` in float32; undoing that is off by
    about 1e-7, which would change the fit's bits. Snapping back recovers ``uint8 / 255``
    exactly, i.e. what ``torchvision.transforms.ToTensor`` feeds kornia in the other tools.
    """
    x01 = data.denormalize(x.detach().float())
    v = x01 * 255
    if float((v - v.round()).abs().max()) < 1e-3:
        x01 = v.round_().div_(255)
    return x01


def zca_dataset(data: RealData, eps: float = DEFAULT_EPS, *,
                cache_dir: str | os.PathLike | None | bool = None) -> RealData:
    """``data`` in ZCA space: kornia's ZCA fitted on its [0, 1] training images.

    Train and test images are whitened with the same transform, as KIP, MTT and
    DD-Ranking do. The result has mean 0 / std 1 (the whitened values are the images),
    a ``pixel_space`` record (``ZCA.record``; a bundle stores it) and its ``whitening``,
    so ``normalize``/``denormalize`` map [0, 1] pixels to ZCA space and back. A RealData
    already in ZCA space is returned as it is.

    Raises:
        ZCAError: fewer than 2 training images.
    """
    if data.pixel_space_record["kind"] == "zca":
        return data
    x01 = unit_pixels(data.train_x, data)
    zca = fit_zca(x01, eps, cache_dir=cache_dir)
    train = zca.apply(x01)
    del x01
    test = zca.apply(unit_pixels(data.test_x, data))
    channels = data.in_channels
    return RealData(
        name=data.name, train_x=train, train_y=data.train_y, test_x=test, test_y=data.test_y,
        classes=list(data.classes), mean=(0.0,) * channels, std=(1.0,) * channels,
        pixel_space=zca.record(data.name, dataset_mean=list(data.mean),
                               dataset_std=list(data.std)),
        whitening=zca,
    )


def normalized_dataset(data: RealData) -> RealData:
    """The inverse of ``zca_dataset``: back to ``(x01 - mean) / std`` with the dataset's stats."""
    space = data.pixel_space_record
    if space["kind"] != "zca":
        return data
    mean = tuple(space.get("dataset_mean") or (0.0,) * data.in_channels)
    std = tuple(space.get("dataset_std") or (1.0,) * data.in_channels)
    plain = normalized_space(mean, std)

    def back(x: Tensor) -> Tensor:
        return from_unit_pixels(data.denormalize(x), plain)

    return RealData(name=data.name, train_x=back(data.train_x), train_y=data.train_y,
                    test_x=back(data.test_x), test_y=data.test_y, classes=list(data.classes),
                    mean=mean, std=std)


def zca_from_record(record: dict[str, Any], *, data: RealData | None = None,
                    data_root: str | os.PathLike | None = None,
                    cache_dir: str | os.PathLike | None | bool = None) -> ZCA:
    """Rebuild the ZCA a bundle or export records, by re-fitting it (a cache hit, usually).

    Args:
        record: a ``{"kind": "zca", ...}`` pixel-space record.
        data: the dataset to fit on; default ``load_dataset(record["dataset"], root=data_root)``.

    Raises:
        ZCAError: the dataset's training images differ from those the record was fitted on.
    """
    space = check_pixel_space(record, int((record.get("shape") or [3])[0]))
    if space["kind"] != "zca":
        raise ZCAError(f"not a ZCA pixel space: {space['kind']}")
    if data is None:
        from ddcli.data._api import load_dataset  # here: _api imports this package's loaders

        data = load_dataset(space["dataset"], root=data_root)
    if data.pixel_space_record["kind"] == "zca" and data.whitening is not None:
        zca = data.whitening
    else:
        zca = fit_zca(unit_pixels(data.train_x, data), space["eps"], cache_dir=cache_dir)
    if zca.data_sha256 != space["data_sha256"]:
        raise ZCAError(
            f"the ZCA was fitted on {space['dataset']} training data with sha256 "
            f"{space['data_sha256'][:12]}..., but the {data.name} found hashes to "
            f"{zca.data_sha256[:12]}...; pass the --data-root that holds the data it was made from")
    return zca


def _stats(space: dict[str, Any], like: Tensor) -> tuple[Tensor, Tensor]:
    """A normalised space's mean and std as (C, 1, 1) tensors like ``like``."""
    c = (len(space["mean"]), 1, 1)
    return tuple(torch.tensor(space[k], dtype=like.dtype, device=like.device).view(c)
                 for k in ("mean", "std"))  # type: ignore[return-value]


def to_unit_pixels(images: Tensor, space: dict[str, Any], *, zca: ZCA | None = None,
                   data_root: str | os.PathLike | None = None) -> Tensor:
    """Images (..., C, H, W) in pixel space ``space`` -> [0, 1] pixels (not clipped)."""
    space = check_pixel_space(space, images.shape[-3])
    if space["kind"] == "normalized":
        mean, std = _stats(space, images)
        return images * std + mean
    return (zca or zca_from_record(space, data_root=data_root)).invert(images)


def from_unit_pixels(x01: Tensor, space: dict[str, Any], *, zca: ZCA | None = None,
                     data_root: str | os.PathLike | None = None) -> Tensor:
    """[0, 1] pixels (..., C, H, W) -> pixel space ``space``; the inverse of ``to_unit_pixels``."""
    space = check_pixel_space(space, x01.shape[-3])
    if space["kind"] == "normalized":
        mean, std = _stats(space, x01)
        return (x01 - mean) / std
    return (zca or zca_from_record(space, data_root=data_root)).apply(x01)


def _save_cached(file: Path, zca: ZCA) -> None:
    m = zca.module
    tensors = {"mean": m.mean_vector, "matrix": m.transform_matrix, "inverse": m.transform_inv}
    meta = {"format": _CACHE_FORMAT, "eps": repr(zca.eps), "shape": json.dumps(list(zca.shape)),
            "data_sha256": zca.data_sha256, "kornia": kornia.__version__,
            "torch": torch.__version__}
    try:
        _io.write_bytes(file, st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                      metadata=meta))
    except OSError:
        pass  # a read-only cache only costs the next caller a re-fit


def _load_cached(file: Path, digest: str, eps: float, shape: tuple) -> ZCA | None:
    try:
        data = file.read_bytes()
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    except Exception:  # missing, truncated or not safetensors (it raises its own types): fit again
        return None
    if (meta.get("format") != _CACHE_FORMAT or meta.get("data_sha256") != digest
            or float(meta.get("eps", "nan")) != eps or json.loads(meta.get("shape", "[]")) != list(shape)):
        return None
    module = kornia.enhance.ZCAWhitening(eps=eps, compute_inv=True)
    # set the fitted buffers directly: works across kornia versions, unlike load_state_dict
    module.mean_vector = tensors["mean"]
    module.transform_matrix = tensors["matrix"]
    module.transform_inv = tensors["inverse"]
    module.fitted = True
    return ZCA(module, shape, digest)
