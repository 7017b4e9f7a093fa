"""Image sets from any tool: ddcli bundles, ``.pt``, ``.npz``, ImageFolder and evaluator exports.

Formats (shared with ``dd export``; N = S * n images in the step-major order of
``Bundle.flat()``):

- ``.pt``: ``torch.save({"images": float32 (N, C, H, W), "labels": int64 (N,), "lrs":
  float32 (T,), ...})``; read with ``weights_only=True``. ``dd export`` adds ``mean``,
  ``std``, ``pixel_space``, ``classes``, ``steps`` and, for soft labels, ``soft_labels``
  (as learned), ``label_probs`` and ``label_logits`` (N, classes). A ``.pt`` without ``pixel_space`` or ``mean``/``std`` is *assumed* to be
  normalised like the evaluation dataset, and loading it warns loudly
  (``PixelSpaceWarning``): released sets are often normalised otherwise, which scores
  them wrong without any error.
- ``.npz``: ``images``, ``labels``, ``lrs`` as above, plus ``mean``/``std`` float32 (C,),
  ``classes`` (str array), ``steps`` (S), optional ``pixel_space`` (JSON string) and
  ``label_probs``.
- ``dd export --format ddranking|mtt`` folders (``images.pt``/``images_best.pt``, labels,
  lr and ``manifest.json``) and ``--format dc`` files (``{"data": [[images, labels]]}``):
  flat class-major sets whose manifest gives the pixel space.
- ImageFolder: ``PATH/<class name>/step<s>_<i>.png``, uint8 pixels, plus an optional
  ``PATH/manifest.json`` as ``dd export`` writes it: its ``images`` records (file, index,
  label) fix the order and labels, and ``lrs``, ``classes``, ``steps``, ``dataset``,
  ``model`` and ``init_scheme`` are used when there. Without records, files sort by
  (step, class, i). Pixels are read as [0, 1] and normalised with the dataset's mean/std.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ddcli.bundle import Bundle
from ddcli.data._folder import IMAGE_SUFFIXES
from ddcli.errors import ImageSetError
from ddcli.evaluate._evaluator_sets import load_dc, load_evaluator_folder
from ddcli.evaluate._image_set import (  # noqa: F401  PixelSpaceWarning: ddcli.evaluate._sets's name
    EVALUATOR_FILES, ImageSet, PixelSpaceWarning, channels, checked_set, read_manifest,
    space_stats, torch_load, warn_unrecorded,
)

SET_KINDS = ("bundle", "pt", "npz", "imagefolder", "ddranking", "mtt", "dc", "run", "snapshot")
_STEP_NAME = re.compile(r"step(\d+)_(\d+)$")


def set_kind(path: str | Path) -> str:
    """The format of ``path``, from its type and suffix (anything else is a bundle)."""
    path = Path(path)
    if path.is_dir():
        if is_run_folder(path):
            return "run"  # a `dd distill` run folder: its last checkpoint's set
        for kind, (images, *_) in EVALUATOR_FILES.items():
            if (path / images).is_file():
                return kind
        return "imagefolder"
    if path.suffix == ".pt" and path.parent.name == "snapshots" and is_run_folder(path.parent.parent):
        return "snapshot"  # RUN_DIR/snapshots/iter_K.pt: the run's set at iteration K
    return {".pt": "pt", ".pth": "pt", ".npz": "npz"}.get(path.suffix.lower(), "bundle")


def is_run_folder(path: Path) -> bool:
    """A `dd distill` run folder: its config and a checkpoint or metrics log."""
    return (path / "config.json").is_file() and any(
        (path / name).is_file() for name in ("checkpoint.pt", "metrics.jsonl"))


def load_image_set(path: str | Path) -> ImageSet:
    """Read a bundle, ``.pt``, ``.npz``, ImageFolder, DD-Ranking, MTT or DC set.

    A set that records no pixel space (a ``.pt`` or ``.npz`` without ``pixel_space`` or
    ``mean``/``std``, an evaluator export without its manifest) warns with
    ``PixelSpaceWarning`` and lists the warning in ``ImageSet.warnings``.

    Raises:
        BundleFormatError: a bundle path that is missing or not a valid bundle.
        ImageSetError: a ``.pt``/``.npz``/folder that is missing or malformed.
    """
    path = Path(path)
    kind = set_kind(path)
    if kind == "bundle":
        return ImageSet.from_bundle(Bundle.load(path), str(path))
    if kind in ("ddranking", "mtt"):
        return load_evaluator_folder(path, kind)
    if kind in ("run", "snapshot"):
        raise ImageSetError(f"{path} is a run's {'folder' if kind == 'run' else kind}: its "
                            "bundle needs the run's data (ddcli.evaluate.evaluate reads it)")
    if kind != "imagefolder" and not path.is_file():
        raise ImageSetError(f"no such image set: {path}")
    loader = {"pt": _load_pt, "npz": _load_npz, "imagefolder": _load_folder}[kind]
    return loader(path)


def _load_pt(path: Path) -> ImageSet:
    obj = torch_load(path, ".pt set")
    if isinstance(obj, dict) and "data" in obj and "images" not in obj:
        return load_dc(path, obj)
    if not isinstance(obj, dict) or "images" not in obj or "labels" not in obj:
        raise ImageSetError(f"{path} must hold a dict with 'images' and 'labels' (and 'lrs')")
    space = obj.get("pixel_space")
    mean, std = space_stats(path, space, obj.get("mean"), obj.get("std"), channels(obj["images"]))
    out = checked_set(path, "pt", obj["images"], obj["labels"], obj.get("lrs"),
                      steps=obj.get("steps"), mean=mean, std=std, classes=obj.get("classes"),
                      soft=obj.get("soft_labels", obj.get("label_probs")))
    out.pixel_space = space if isinstance(space, dict) else None
    if mean is None and out.pixel_space is None:
        warn_unrecorded(out)
    return out


def _load_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ImageSetError(f"{path} is not a readable .npz set: {exc}") from None
    if "images" not in arrays or "labels" not in arrays:
        raise ImageSetError(f"{path} must hold arrays 'images' and 'labels' (and 'lrs')")
    mean = tuple(float(v) for v in arrays["mean"].reshape(-1)) if "mean" in arrays else None
    std = tuple(float(v) for v in arrays["std"].reshape(-1)) if "std" in arrays else None
    classes = [str(c) for c in arrays["classes"].reshape(-1)] if "classes" in arrays else None
    steps = int(arrays["steps"]) if "steps" in arrays else None
    try:
        space = json.loads(str(arrays["pixel_space"])) if "pixel_space" in arrays else None
    except ValueError:
        raise ImageSetError(f"{path}: pixel_space is not valid JSON") from None
    if space is not None:
        mean, std = space_stats(path, space, mean, std, arrays["images"].shape[1])
    key = next((k for k in ("soft_labels", "label_probs") if k in arrays), None)
    soft = torch.from_numpy(arrays[key]) if key else None
    out = checked_set(
        path, "npz", torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]),
        torch.from_numpy(arrays["lrs"]) if "lrs" in arrays else None,
        steps=steps, mean=mean, std=std, classes=classes, soft=soft,
    )
    out.pixel_space = space if isinstance(space, dict) else None
    if mean is None and out.pixel_space is None:
        warn_unrecorded(out)
    return out


def _load_folder(path: Path) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise ImageSetError(f"no such image folder: {path}")
    manifest = read_manifest(path)
    records = manifest.get("images")
    entries = _entries_from_records(path, records) if records else _entries_from_names(
        path, manifest.get("classes"))
    if not entries:
        raise ImageSetError(f"{path} holds no images")
    entries.sort(key=lambda e: e[0])
    classes = manifest.get("classes") or sorted({e[2].parent.name for e in entries})
    pixels = []
    try:
        for *_, f in entries:
            with Image.open(f) as im:
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
                arr = np.asarray(im.convert("L" if gray else "RGB"))
            pixels.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # (C, H, W)
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageSetError(f"can't read image {f}: {exc}") from None
    if len({p.shape for p in pixels}) != 1:
        raise ImageSetError(f"{path}: images differ in size or channels")
    # [0, 1] pixels, declared as normalised with mean 0 / std 1: the evaluation then
    # normalises them with the dataset's statistics, with the dataset loaders' arithmetic.
    x01 = torch.from_numpy(np.stack(pixels).astype(np.float32)).div_(255)
    labels = torch.tensor([e[1] for e in entries])
    steps = manifest.get("steps")
    if not records and all(e[0][0] < 1 << 30 for e in entries):
        steps = len({e[0][0] for e in entries})
    lrs = torch.tensor(manifest["lrs"], dtype=torch.float32) if manifest.get("lrs") else None
    channels = x01.shape[1]
    out = checked_set(path, "imagefolder", x01, labels, lrs, steps=steps,
                   mean=(0.0,) * channels, std=(1.0,) * channels, classes=list(classes))
    out.dataset, out.model = manifest.get("dataset"), manifest.get("model")
    out.init_scheme = manifest.get("init_scheme")
    return out


def _entries_from_records(path: Path, records: list) -> list[tuple[tuple, int, Path]]:
    """(sort key, label, file) from the manifest's per-file records (key: flat index)."""
    try:
        return [((int(r["index"]),), int(r["label"]), path / r["file"]) for r in records]
    except (KeyError, TypeError, ValueError):
        raise ImageSetError(f"{path}/manifest.json has malformed image records") from None


def _entries_from_names(path: Path, classes: list[str] | None) -> list[tuple[tuple, int, Path]]:
    """(sort key, label, file) parsed from <class>/step<s>_<i> names."""
    folders = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = classes or folders
    unknown = [f for f in folders if f not in classes]
    if not folders or unknown:
        found = "found none" if not folders else "not in the manifest: " + ", ".join(unknown)
        raise ImageSetError(
            f"{path}: expected one folder per class (<class>/step<s>_<i>.png); {found}")
    entries = []
    for name in folders:
        c = classes.index(name)
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
                continue
            m = _STEP_NAME.search(f.stem)
            # Sorting by (step, class, i) rebuilds Bundle.flat()'s order whether i counts
            # within the step or within the class; files without stepN_ names go last.
            s, i = (int(m.group(1)), int(m.group(2))) if m else (1 << 30, len(entries))
            entries.append(((s, c, i), c, f))
    return entries
