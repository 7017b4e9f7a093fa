"""`RealData`: the preloaded, normalised dataset every loader returns; pixel-space records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ddcli.errors import ConfigError

PIXEL_KINDS = ("normalized", "zca")


class PixelTransform(Protocol):
    """A fitted invertible map from [0, 1] pixels to a dataset's pixel space (e.g. `ZCA`)."""

    def apply(self, x01: torch.Tensor) -> torch.Tensor: ...

    def invert(self, z: torch.Tensor) -> torch.Tensor: ...


def normalized_space(mean, std) -> dict[str, Any]:
    """The pixel-space record of `(x01 - mean) / std` per channel."""
    return {"kind": "normalized", "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def check_pixel_space(record: Any, channels: int) -> dict[str, Any]:
    """Validate a pixel-space record for `channels`-channel images; return a clean copy.

    Raises:
        ValueError: not a record ddcli knows, with what is wrong.
    """
    if not isinstance(record, dict) or record.get("kind") not in PIXEL_KINDS:
        raise ValueError(f"a pixel space is a dict with kind in {PIXEL_KINDS}, got {record!r:.80}")
    out = dict(record)
    if out["kind"] == "normalized":
        try:
            out["mean"] = [float(v) for v in out["mean"]]
            out["std"] = [float(v) for v in out["std"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError("a normalized pixel space needs per-channel mean and std") from None
        if len(out["mean"]) != channels or len(out["std"]) != channels:
            raise ValueError(f"mean and std need {channels} values, one per channel")
        if min(out["std"]) <= 0:
            raise ValueError("std values must be positive")
        return out
    try:
        out["eps"] = float(out["eps"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("a zca pixel space needs its eps") from None
    for key in ("dataset", "data_sha256"):
        if not isinstance(out.get(key), str) or not out[key]:
            raise ValueError(f"a zca pixel space needs {key!r} (which data it was fitted on)")
    return out


@dataclass(eq=False)
class RealData:
    """A labelled image dataset held in memory as tensors, already normalised.

    Every loader returns one of these with the whole training and test split
    preloaded, so training code indexes tensors instead of iterating a DataLoader.
    Pixels are stored as `(x01 - mean) / std` per channel, where `x01` is the image
    scaled to [0, 1]; `normalize` and `denormalize` convert between the two.

    Attributes:
        name: The name it was loaded by, e.g. `"mnist"` or `"folder:/abs/path"`.
        train_x: Training images, `(N, C, H, W)` float32, normalised.
        train_y: Training labels, `(N,)` int64, indices into `classes`.
        test_x: Test images, `(M, C, H, W)` float32, normalised.
        test_y: Test labels, `(M,)` int64.
        classes: Class names; label `i` is `classes[i]`.
        mean: Per-channel mean used for normalisation, in [0, 1] pixel units.
        std: Per-channel standard deviation used for normalisation.
        pixel_space: `None` for `(x01 - mean) / std`; else a record of the space the
            images are in, e.g. `{"kind": "zca", "eps": 0.1, ...}` (`ddcli.data.zca`),
            with mean 0 and std 1 (the transformed values are the images).
        whitening: the fitted transform of a non-normalised `pixel_space` (a `ZCA`),
            which `normalize` and `denormalize` then go through.

    Example:
        >>> from ddcli.data import load_dataset
        >>> data = load_dataset("mnist", root="tests/fixtures", download=False)
        >>> data.train_x.shape, data.num_classes, data.classes[:3]
        (torch.Size([600, 1, 28, 28]), 10, ['0', '1', '2'])
        >>> x01 = data.denormalize(data.train_x)  # back to [0, 1] pixels
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_space: dict[str, Any] | None = field(default=None, repr=False)
    whitening: PixelTransform | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dim() != 4 or x.dtype != torch.float32:
                raise ValueError(f"{split}_x must be (N, C, H, W) float32, got {tuple(x.shape)} {x.dtype}")
            if y.shape != (x.shape[0],) or y.dtype != torch.int64:
                raise ValueError(f"{split}_y must be ({x.shape[0]},) int64, got {tuple(y.shape)} {y.dtype}")
            if y.numel() and not 0 <= int(y.min()) <= int(y.max()) < len(self.classes):
                raise ValueError(f"{split}_y has labels outside 0..{len(self.classes) - 1}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {tuple(self.train_x.shape[1:])} "
                f"vs {tuple(self.test_x.shape[1:])}"
            )
        channels, height, width = self.train_x.shape[1:]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values, one per channel")
        if height != width:
            raise ConfigError(f"dataset {self.name!r} has {height}x{width} images; they must be square")
        if self.pixel_space is not None:
            self.pixel_space = check_pixel_space(self.pixel_space, channels)
            if self.pixel_space["kind"] != "normalized" and self.whitening is None:
                raise ValueError(f"a {self.pixel_space['kind']} RealData needs its fitted whitening")

    @property
    def pixel_space_record(self) -> dict[str, Any]:
        """The space `train_x`/`test_x` are in, always as a record (see `check_pixel_space`)."""
        return dict(self.pixel_space) if self.pixel_space is not None else normalized_space(
            self.mean, self.std)

    @property
    def num_classes(self) -> int:
        """Number of classes, `len(classes)`."""
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """Image channels `C`: 1 for grayscale, 3 for RGB."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width) of the square images, in pixels."""
        return int(self.train_x.shape[2])

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map `[0, 1]` pixels `(..., C, H, W)` to the space of `train_x` (normalised or ZCA)."""
        if self.whitening is not None:
            return self.whitening.apply(x01)
        mean, std = self._stats_like(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: `(..., C, H, W)` in the space of `train_x` back to `[0, 1]` pixels."""
        if self.whitening is not None:
            return self.whitening.invert(x)
        mean, std = self._stats_like(x)
        return x * std + mean

    def _stats_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (C, 1, 1), so they broadcast over any leading dims such as (steps, k, C, H, W).
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def __repr__(self) -> str:
        return (
            f"RealData(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"image=({self.in_channels}, {self.image_size}, {self.image_size}), "
            f"classes={self.num_classes})"
        )


def normalized_tensor(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 `(N, C, H, W)` pixels -> normalised float32 tensor, with the same arithmetic as `normalize`."""
    # One float copy, then in-place ops: a 60k MNIST split is ~190 MB as float32,
    # and a per-image transform pipeline would take tens of seconds instead of ~1.
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255)
    shape = (len(mean), 1, 1)
    x.sub_(torch.tensor(mean, dtype=torch.float32).view(shape))
    return x.div_(torch.tensor(std, dtype=torch.float32).view(shape))


def labels_tensor(labels: np.ndarray) -> torch.Tensor:
    """Any integer label array -> `(N,)` int64 tensor."""
    return torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
