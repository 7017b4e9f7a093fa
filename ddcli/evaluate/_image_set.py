"""What every image-set reader shares: ``ImageSet``, its checks, pixel spaces and manifests.

The readers of ddcli's own formats (``_sets``) and of the evaluators' exports
(``_evaluator_sets``) both build on this module, and neither on the other's internals.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddcli.bundle import Bundle
from ddcli.errors import ImageSetError

EVALUATOR_FILES = {"ddranking": ("images.pt", "labels.pt", "lr.pt"),
                    "mtt": ("images_best.pt", "labels_best.pt", "lr_best.pt")}


class PixelSpaceWarning(UserWarning):
    """An image set does not say what pixel space (normalisation) its images are in."""


@dataclass
class ImageSet:
    """A labelled image set to evaluate, whatever file it came from.

    Attributes:
        images: (S, n, C, H, W), normalised with ``mean``/``std``.
        labels: (S, n) class indices (into ``classes`` when given).
        lrs: (T,) learned rates (``lrs_from_raw`` of the raw ones), or None.
        kind: one of ``SET_KINDS``.
        source: where it was read from.
        mean, std: the normalisation the images carry; None means "the dataset's".
        classes: class names by label index, or None.
        dataset: the dataset it was made from, when the file says.
        model: the model spec it was made for, when the file says.
        init_scheme: the weight init it was made with, when the file says.
        bundle: the bundle itself, for ``kind == "bundle"``.
        soft_labels: (S, n, classes) the learned label vectors (the inner loss's targets),
            for soft-label sets; else None. Files with only ``label_probs`` give those.
        pixel_space: the file's pixel-space record (``{"kind": "zca", ...}`` for ZCA
            sets); None when it records none.
        warnings: what a user must hear about the file (e.g. no pixel-space record).
    """

    images: Tensor
    labels: Tensor
    lrs: Tensor | None
    kind: str
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: list[str] | None = None
    dataset: str | None = None
    model: dict | None = None
    init_scheme: str | None = None
    bundle: Bundle | None = None
    soft_labels: Tensor | None = None
    pixel_space: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_bundle(cls, bundle: Bundle, source: str = "<bundle>") -> "ImageSet":
        return cls(
            images=bundle.images, labels=bundle.labels, lrs=bundle.lrs.detach(), kind="bundle",
            source=source, mean=tuple(bundle.mean), std=tuple(bundle.std),
            classes=list(bundle.classes), dataset=bundle.dataset, model=dict(bundle.model),
            init_scheme=bundle.init_scheme, bundle=bundle,
            soft_labels=bundle.soft_labels,
            pixel_space=bundle.pixel_space_record,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]

    def flat(self) -> tuple[Tensor, Tensor]:
        """Images (S * n, C, H, W) and labels (S * n,), step-major."""
        return self.images.reshape(-1, *self.input_shape), self.labels.reshape(-1)


def torch_load(path: Path, what: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise ImageSetError(f"{path} is not a readable {what}: {type(exc).__name__}") from None


def channels(images) -> int:
    return int(images.shape[1]) if isinstance(images, Tensor) and images.dim() == 4 else 0


def space_stats(path, space, mean, std, channels: int) -> tuple[tuple | None, tuple | None]:
    """mean/std of a set from its pixel-space record, else from explicit mean/std."""
    if isinstance(space, dict) and space.get("kind") == "normalized":
        mean, std = space.get("mean"), space.get("std")
    elif isinstance(space, dict) and space.get("kind") == "zca":
        # ZCA values are the images: identity statistics, and the record says the rest
        mean, std = (0.0,) * channels, (1.0,) * channels
    elif space is not None:
        raise ImageSetError(f"{path}: unknown pixel_space record {space!r:.80}")
    try:
        return (None if mean is None else tuple(float(v) for v in mean),
                None if std is None else tuple(float(v) for v in std))
    except (TypeError, ValueError):
        raise ImageSetError(f"{path}: mean and std must be lists of numbers") from None


def warn_unrecorded(s: ImageSet) -> None:
    message = (
        "records no pixel space: its images are ASSUMED to be normalised with the "
        "evaluation dataset's own mean/std. Released sets often are not (DC, MTT and "
        "DD-Ranking normalise CIFAR-10 with std 0.2023/0.1994/0.2010, ddcli with "
        "0.2470/0.2435/0.2616), which scores them wrong without any error; re-export with "
        "`dd export` (it records the space) or check how the set was made")
    s.warnings.append(f"{s.source} {message}")
    # Attributed to the set's file, line 0: the warning then prints as one line naming the
    # file ("s.pt:0: PixelSpaceWarning: records no pixel space: ..."), not a line of ddcli.
    warnings.warn_explicit(message, PixelSpaceWarning, filename=s.source, lineno=0,
                           module="ddcli.evaluate")


def read_manifest(path: Path) -> dict:
    file = path / "manifest.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ImageSetError(f"{file} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def checked_set(path, kind, images, labels, lrs, *, steps=None, mean=None, std=None,
             classes=None, soft=None) -> ImageSet:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ImageSetError(f"{path}: images must be float (N, C, H, W), got "
                            f"{tuple(getattr(images, 'shape', ()))}")
    n = images.shape[0]
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,) or labels.is_floating_point():
        raise ImageSetError(f"{path}: labels must be integers of shape ({n},)")
    if n == 0 or labels.min() < 0:
        raise ImageSetError(f"{path}: empty set or negative labels")
    if lrs is not None and (not isinstance(lrs, Tensor) or lrs.dim() != 1 or not (lrs > 0).all()):
        raise ImageSetError(f"{path}: lrs must be a 1-D array of positive rates")
    steps = int(steps) if steps else 1
    if steps < 1 or n % steps:
        raise ImageSetError(f"{path}: {n} images don't split into {steps} steps")
    for name, stats in (("mean", mean), ("std", std)):
        if stats is not None and len(stats) != images.shape[1]:
            raise ImageSetError(
                f"{path}: {name} has {len(stats)} values for {images.shape[1]} channels")
    if soft is not None and (not isinstance(soft, Tensor) or soft.dim() != 2
                             or soft.shape[0] != n or not soft.is_floating_point()):
        raise ImageSetError(f"{path}: soft labels must be float ({n}, classes)")
    return ImageSet(
        images=images.float().reshape(steps, n // steps, *images.shape[1:]),
        labels=labels.long().reshape(steps, n // steps),
        lrs=None if lrs is None else lrs.float(), kind=kind, source=str(path),
        mean=mean, std=std, classes=None if classes is None else [str(c) for c in classes],
        soft_labels=None if soft is None else soft.float().reshape(steps, n // steps, -1),
    )
