"""`RealData`: the preloaded, normalised dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ddcli.errors import ConfigError


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
        """Map `[0, 1]` pixels `(..., C, H, W)` to the normalised space of `train_x`."""
        mean, std = self._stats_like(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: normalised `(..., C, H, W)` back to `[0, 1]` pixels."""
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
