"""The bundle: a distilled dataset as one safetensors file with text metadata.

Layout (format version 2; see docs/bundle-format.md):

tensors
    images        float32 (S, n, C, H, W)  in the bundle's pixel space; n = classes * k
    labels        int64   (S, n)           the slots' classes, class-major within each step
    soft_labels   float32 (S, n, C)        learned label vectors (soft-label bundles only)
    raw_lrs       float32 (T,)             T = S * epochs; the rates are lrs_from_raw(raw_lrs)
    init.<name>   float32                  the fixed init's weights (fixed modes only)
metadata (all strings)
    format="ddcli-bundle", format_version, ddcli_version, dataset, classes (JSON),
    mean / std (JSON), pixel_space (JSON), input_shape (JSON), model (JSON spec),
    init_scheme, init_mode, seed, steps, epochs, images_per_class, config (JSON),
    summary (JSON), extra (JSON), provenance (JSON)

Version 1 (no soft labels, no pixel_space, no provenance) loads unchanged: its images are
normalised with mean/std. Nothing is pickled: safetensors holds raw tensor bytes and a
JSON header.
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
from ddcli.data._realdata import check_pixel_space, normalized_space
from ddcli.core.rates import lrs_from_raw
from ddcli.errors import BundleFormatError
from ddcli.init_modes import InitMode

FORMAT_NAME = "ddcli-bundle"
FORMAT_VERSION = 2
_INIT_PREFIX = "init."
# log(0) is -inf, which no evaluator's softmax wants; a probability this small is zero to
# any float32 softmax next to the others (e^-18.4 vs 1) and keeps the logits finite.
MIN_LABEL_PROB = 1e-8


@dataclass
class Bundle:
    """A distilled dataset with everything needed to use and reproduce it.

    Example:
        >>> b = Bundle.load("m.safetensors")  # doctest: +SKIP
        >>> b.images.shape, b.lrs.shape  # doctest: +SKIP
        (torch.Size([10, 10, 1, 28, 28]), torch.Size([30]))
    """

    images: torch.Tensor  # (S, n, C, H, W), in pixel_space
    labels: torch.Tensor  # (S, n): the slots' classes, class-major in each step
    raw_lrs: torch.Tensor  # (T,)
    dataset: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: dict[str, Any]  # create_model spec: name, in_channels, num_classes, image_size, ...
    init_scheme: str = "xavier"
    init_mode: str = InitMode.FIXED.value
    seed: int = 0
    epochs: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    init_params: dict[str, torch.Tensor] | None = None
    # (S, n, C) non-negative learned label vectors, or None for hard labels (format 2)
    soft_labels: torch.Tensor | None = None
    # None: normalised with mean/std, as every version-1 bundle; else a pixel-space record
    # such as {"kind": "zca", "eps": 0.1, ...} (ddcli.data.zca); see pixel_space_record
    pixel_space: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, command, commit, ...

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
        """The learned GD rates, ``ddcli.core.rates.lrs_from_raw(raw_lrs)``, shape (T,)."""
        return lrs_from_raw(self.raw_lrs)

    @property
    def pixel_space_record(self) -> dict[str, Any]:
        """What space ``images`` are in, always as a record.

        ``{"kind": "normalized", "mean": [...], "std": [...]}`` (``(x01 - mean) / std``)
        unless the bundle says otherwise, e.g. ``{"kind": "zca", "eps": 0.1, ...}``.
        """
        if self.pixel_space is None:
            return normalized_space(self.mean, self.std)
        return dict(self.pixel_space)

    @property
    def has_soft_labels(self) -> bool:
        return self.soft_labels is not None

    def label_probs(self) -> torch.Tensor:
        """Label distributions (S, n, C): the soft labels normalised to sum to 1, or one-hot."""
        if self.soft_labels is None:
            return F.one_hot(self.labels, self.num_classes).float()
        soft = self.soft_labels.detach().float()
        return soft / soft.sum(-1, keepdim=True)

    def label_logits(self, min_prob: float = MIN_LABEL_PROB) -> torch.Tensor:
        """``log(label_probs())`` with probabilities clamped to ``min_prob``: (S, n, C).

        ``softmax`` of these gives back ``label_probs()`` (to within ``min_prob``), which
        is how DD-Ranking and MTT-style code read soft labels.
        """
        return self.label_probs().clamp_min(min_prob).log()

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images and labels as (S * n, C, H, W) and (S * n,)."""
        return self.images.reshape(-1, *self.input_shape), self.labels.reshape(-1)

    def flat_label_probs(self) -> torch.Tensor:
        """``label_probs()`` in the order of ``flat()``: (S * n, C)."""
        return self.label_probs().reshape(-1, self.num_classes)

    def flat_label_logits(self, min_prob: float = MIN_LABEL_PROB) -> torch.Tensor:
        """``label_logits()`` in the order of ``flat()``: (S * n, C)."""
        return self.label_logits(min_prob).reshape(-1, self.num_classes)

    def class_major_order(self) -> torch.Tensor:
        """Indices into ``flat()`` that sort it class-major: (S * n,) int64.

        Class 0's images first, then class 1's, ...; within a class, step 0's images
        first, in slot order. DC, MTT and DD-Ranking expect this layout (DD-Ranking
        rebuilds labels as ``[0] * ipc + [1] * ipc + ...``).
        """
        flat_labels = self.labels.reshape(-1)
        # a stable sort keeps step-major order inside each class
        return torch.sort(flat_labels, stable=True).indices

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
        if self.soft_labels is not None:
            self._validate_soft_labels()
        if self.pixel_space is not None:
            self._validate_pixel_space()
        if not isinstance(self.provenance, dict):
            raise BundleFormatError("bundle provenance must be a JSON object")
        return self

    def _validate_soft_labels(self) -> None:
        soft, want = self.soft_labels, (*self.images.shape[:2], self.num_classes)
        if tuple(soft.shape) != want or not soft.is_floating_point():
            raise BundleFormatError(
                f"bundle soft labels must be float {want} (steps, images, classes), "
                f"got {tuple(soft.shape)} {soft.dtype}")
        if not torch.isfinite(soft).all() or (soft < 0).any():
            raise BundleFormatError("bundle soft labels must be finite and non-negative")
        if (soft.sum(-1) <= 0).any():
            raise BundleFormatError("a bundle soft label sums to 0; it has no distribution")

    def _validate_pixel_space(self) -> None:
        try:
            space = check_pixel_space(self.pixel_space, self.input_shape[0])
        except ValueError as exc:
            raise BundleFormatError(f"bundle pixel_space: {exc}") from None
        if space["kind"] == "normalized" and not (
                _same(space["mean"], self.mean) and _same(space["std"], self.std)):
            raise BundleFormatError("bundle pixel_space mean/std differ from its mean/std")
        if space["kind"] == "zca" and not (
                _same(self.mean, [0.0] * len(self.mean)) and _same(self.std, [1.0] * len(self.std))):
            # the ZCA values are the images; a second normalisation on top would be ambiguous
            raise BundleFormatError("a ZCA bundle's mean/std must be 0/1 (the images are the "
                                    "whitened values themselves)")

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
            "pixel_space": json.dumps(self.pixel_space_record),
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
            "provenance": json.dumps(self.provenance),
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
        if len(data) >= 9 and not _has_safetensors_header(data):
            raise BundleFormatError(f"{path} is not a ddcli bundle (not a safetensors file at "
                                    "all: a bundle is the .safetensors that dd distill writes)")
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
                init_mode=meta.get("init_mode", InitMode.FIXED.value),
                seed=int(meta.get("seed", 0)),
                epochs=int(meta["epochs"]),
                config=json.loads(meta.get("config", "{}")),
                summary=json.loads(meta.get("summary", "{}")),
                extra=json.loads(meta.get("extra", "{}")),
                init_params=init or None,
                soft_labels=tensors.get("soft_labels"),
                pixel_space=_stored_space(meta),
                provenance=json.loads(meta.get("provenance", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleFormatError(f"{path} has missing or malformed metadata: {exc}") from None
        bundle.validate()
        if bundle.pixel_space is not None and bundle.pixel_space["kind"] == "normalized":
            # checked against mean/std above; None is the one in-memory form of "normalized"
            bundle.pixel_space = None
        return bundle


def _stored_space(meta: dict[str, str]) -> Any:
    # Version 1 has no record: its images are normalised with mean/std (None).
    return json.loads(meta["pixel_space"]) if "pixel_space" in meta else None


def _same(a, b) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-7 for x, y in zip(a, b))


def _read_metadata(data: bytes) -> dict[str, str]:
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__".
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__", {}) or {}


def _has_safetensors_header(data: bytes) -> bool:
    """Whether ``data`` starts as every safetensors file does: an 8-byte little-endian
    header length, then that JSON header's opening brace (a text file never does; a
    truncated bundle still does, and is reported as truncated)."""
    return data[8:9] == b"{" and int.from_bytes(data[:8], "little") > 1
