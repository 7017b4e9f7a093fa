"""The bundle: a distilled dataset as one safetensors file with text metadata.

Layout (format version 1; see docs/bundle-format.md):

tensors
    images        float32 (S, n, C, H, W)  normalised; n = classes * images_per_class
    labels        int64   (S, n)           class-major within each step
    raw_lrs       float32 (T,)             T = S * epochs; rates are softplus(raw_lrs)
    init.<name>   float32                  the fixed init's weights (fixed modes only)
metadata (all strings)
    format="ddcli-bundle", format_version, ddcli_version, dataset, classes (JSON),
    mean / std (JSON), input_shape (JSON), model (JSON spec), init_scheme, init_mode,
    seed, steps, epochs, images_per_class, config (JSON), summary (JSON), extra (JSON)

Nothing is pickled: safetensors holds raw tensor bytes and a JSON header.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ddcli.infra import io as _io
from ddcli._version import __version__
from ddcli.errors import BundleFormatError

FORMAT_NAME = "ddcli-bundle"
FORMAT_VERSION = 1
_INIT_PREFIX = "init."


@dataclass
class Bundle:
    """A distilled dataset with everything needed to use and reproduce it.

    Example:
        >>> b = Bundle.load("m.safetensors")  # doctest: +SKIP
        >>> b.images.shape, b.lrs.shape  # doctest: +SKIP
        (torch.Size([10, 10, 1, 28, 28]), torch.Size([30]))
    """

    images: torch.Tensor  # (S, n, C, H, W)
    labels: torch.Tensor  # (S, n)
    raw_lrs: torch.Tensor  # (T,)
    dataset: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: dict[str, Any]  # create_model spec: name, in_channels, num_classes, image_size, ...
    init_scheme: str = "xavier"
    init_mode: str = "fixed"
    seed: int = 0
    epochs: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    init_params: dict[str, torch.Tensor] | None = None
    soft_labels: torch.Tensor | None = None  # (S, n, classes) learned labels, >= 0

    @property
    def steps(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def images_per_class(self) -> int:
        return self.images.shape[1] // self.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]

    @property
    def lrs(self) -> torch.Tensor:
        """The learned learning rates, softplus(raw_lrs), shape (T,)."""
        return F.softplus(self.raw_lrs)

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels as (S * n, C, H, W) and (S * n,)."""
        return self.images.reshape(-1, *self.input_shape), self.labels.reshape(-1)

    def validate(self) -> "Bundle":
        s = self.images.shape
        if self.images.dim() != 5:
            raise BundleFormatError(f"bundle images must be (S, n, C, H, W), got {tuple(s)}")
        if tuple(self.labels.shape) != tuple(s[:2]):
            raise BundleFormatError(
                f"bundle labels {tuple(self.labels.shape)} don't match images {tuple(s)}"
            )
        if self.raw_lrs.dim() != 1 or self.raw_lrs.shape[0] != s[0] * self.epochs:
            raise BundleFormatError(
                f"bundle has {self.raw_lrs.numel()} rates but {s[0]} steps x {self.epochs} epochs"
            )
        if s[1] % max(self.num_classes, 1) or not self.classes:
            raise BundleFormatError(
                f"bundle has {s[1]} images per step, not a multiple of {self.num_classes} classes"
            )
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise BundleFormatError("bundle labels fall outside its class list")
        if len(self.mean) != s[2] or len(self.std) != s[2]:
            raise BundleFormatError("bundle normalisation does not match its channel count")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (a temporary file, then a rename)."""
        self.validate()
        tensors = {
            "images": self.images.detach().float().contiguous().cpu(),
            "labels": self.labels.detach().long().contiguous().cpu(),
            "raw_lrs": self.raw_lrs.detach().float().contiguous().cpu(),
        }
        if self.soft_labels is not None:
            tensors["soft_labels"] = self.soft_labels.detach().float().contiguous().cpu()
        for name, value in (self.init_params or {}).items():
            tensors[_INIT_PREFIX + name] = value.detach().float().contiguous().cpu()
        meta = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "ddcli_version": __version__,
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "input_shape": json.dumps(list(self.input_shape)),
            "model": json.dumps(self.model),
            "init_scheme": self.init_scheme,
            "init_mode": self.init_mode,
            "seed": str(self.seed),
            "steps": str(self.steps),
            "epochs": str(self.epochs),
            "images_per_class": str(self.images_per_class),
            "config": json.dumps(self.config),
            "summary": json.dumps(self.summary),
            "extra": json.dumps(self.extra),
        }
        path = Path(path)
        _io.write_bytes(path, st_save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bundle":
        """Read a bundle; raise BundleFormatError for anything that is not a valid one."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleFormatError(f"no such bundle: {path}") from None
        except IsADirectoryError:
            raise BundleFormatError(f"{path} is a folder, not a bundle file") from None
        except OSError as exc:
            raise BundleFormatError(f"can't read {path}: {exc.strerror or exc}") from None
        try:
            tensors = st_load(data)
            meta = _read_metadata(data)
        except (SafetensorError, ValueError, OverflowError) as exc:
            raise BundleFormatError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from None
        if meta.get("format") != FORMAT_NAME:
            raise BundleFormatError(f"{path} is a safetensors file but not a ddcli bundle")
        try:
            version = int(meta["format_version"])
        except (KeyError, ValueError):
            raise BundleFormatError(f"{path} has no valid format_version") from None
        if version > FORMAT_VERSION:
            raise BundleFormatError(
                f"{path} uses bundle format {version}, newer than this ddcli supports "
                f"({FORMAT_VERSION}); upgrade ddcli"
            )
        try:
            init = {
                k[len(_INIT_PREFIX):]: v for k, v in tensors.items() if k.startswith(_INIT_PREFIX)
            }
            bundle = cls(
                images=tensors["images"],
                labels=tensors["labels"],
                raw_lrs=tensors["raw_lrs"],
                dataset=meta["dataset"],
                classes=json.loads(meta["classes"]),
                mean=tuple(json.loads(meta["mean"])),
                std=tuple(json.loads(meta["std"])),
                model=json.loads(meta["model"]),
                init_scheme=meta.get("init_scheme", "xavier"),
                init_mode=meta.get("init_mode", "fixed"),
                seed=int(meta.get("seed", 0)),
                epochs=int(meta["epochs"]),
                config=json.loads(meta.get("config", "{}")),
                summary=json.loads(meta.get("summary", "{}")),
                extra=json.loads(meta.get("extra", "{}")),
                init_params=init or None,
                soft_labels=tensors.get("soft_labels"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleFormatError(f"{path} has missing or malformed metadata: {exc}") from None
        return bundle.validate()


def _read_metadata(data: bytes) -> dict[str, str]:
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}) or {}
