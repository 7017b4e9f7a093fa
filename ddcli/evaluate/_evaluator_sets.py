"""Reading the evaluator exports of ``dd export`` back: DD-Ranking and MTT folders, DC files.

They are flat, class-major sets (one "step") in the evaluator's pixel space; their
``manifest.json`` (for DC, the file's ``"ddcli_manifest"``) gives that space, the class
names and the dataset, so ``dd eval`` converts them like any other set. Without one, the
set's pixel space is unknown and loading it warns (``PixelSpaceWarning``). Soft labels
come back as ddcli trains on them: the normalised rows times the manifest's
``label_mass``, the rows' sums that the evaluators' logits can't hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ddcli.errors import ImageSetError
from ddcli.evaluate._image_set import (
    EVALUATOR_FILES, ImageSet, channels, checked_set, read_manifest, space_stats, torch_load,
    warn_unrecorded,
)


def load_dc(path: Path, obj: dict) -> ImageSet:
    """DC/DSA/DM results: ``{"data": [[images, labels], ...]}``; the last entry is the set."""
    try:
        images, labels = obj["data"][-1][:2]
    except (TypeError, IndexError, ValueError, KeyError):
        raise ImageSetError(f"{path}: 'data' must be a list of [images, labels] pairs") from None
    manifest = obj.get("ddcli_manifest")
    out = _from_manifest(path, "dc", images, labels, None, manifest)
    if not isinstance(manifest, dict):
        warn_unrecorded(out)
    return out


def load_evaluator_folder(path: Path, kind: str) -> ImageSet:
    names = EVALUATOR_FILES[kind]
    images = torch_load(path / names[0], "tensor file")
    labels = torch_load(path / names[1], "tensor file") if (path / names[1]).is_file() else None
    lr = torch_load(path / names[2], "tensor file") if (path / names[2]).is_file() else None
    manifest = read_manifest(path)
    if labels is None:  # DD-Ranking's own rule: class-major, ipc = N / classes
        classes = int(manifest.get("num_classes") or 0)
        if not classes or not isinstance(images, Tensor) or images.shape[0] % classes:
            raise ImageSetError(f"{path}: no {names[1]} and no class count to rebuild labels")
        labels = torch.arange(classes).repeat_interleave(images.shape[0] // classes)
    out = _from_manifest(path, kind, images, labels, lr, manifest or None)
    if not manifest:
        warn_unrecorded(out)
    return out


def _from_manifest(path, kind, images, labels, lr, manifest) -> ImageSet:
    manifest = manifest if isinstance(manifest, dict) else {}
    soft = None
    if isinstance(labels, Tensor) and labels.dim() == 2 and labels.is_floating_point():
        soft = labels.float().softmax(-1)  # soft labels are stored as logits
        mass = manifest.get("label_mass")
        if isinstance(mass, list) and len(mass) == soft.shape[0]:
            # the rows' sums as learned, which the logits drop: back to ddcli's targets
            soft = soft * torch.tensor(mass, dtype=torch.float32)[:, None]
        # the slots' classes: class-major, ipc per class (the argmax may differ)
        classes = soft.shape[1]
        labels = (torch.arange(classes).repeat_interleave(soft.shape[0] // classes)
                  if soft.shape[0] % classes == 0 else soft.argmax(-1))
    space = manifest.get("pixel_space")
    mean, std = space_stats(path, space, manifest.get("mean"), manifest.get("std"),
                            channels(images))
    if isinstance(lr, Tensor):
        lr = lr.reshape(-1).float()
    out = checked_set(path, kind, images, labels, lr, mean=mean, std=std,
                      classes=manifest.get("classes"), soft=soft)
    out.pixel_space = space if isinstance(space, dict) else None
    out.dataset, out.model = manifest.get("dataset"), manifest.get("model")
    return out
