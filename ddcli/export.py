"""Export a bundle to the formats other tools read; see docs/visualize-export.md.

ddcli's own layouts (N = S * n images in the step-major order of ``Bundle.flat()``):

``pt``
    ``torch.save({"images": float32 (N, C, H, W) in the bundle's pixel space, "labels":
    int64 (N,), "lrs": float32 (T,), "mean", "std", "pixel_space" (dict), "classes",
    "steps"})``, plus ``"label_logits"``, ``"label_probs"`` and ``"soft_labels"`` (as learned) float32 (N, classes) for
    soft-label bundles. Load with ``torch.load(path, weights_only=True)``.
``npz``
    the same arrays; ``pixel_space`` is a JSON string. Loads with ``allow_pickle=False``.
``imagefolder``
    ``PATH/<class name>/step<s>_<j>.png`` (uint8 [0, 1] pixels; ``j`` counts the class's
    images within step ``s``) and ``PATH/manifest.json`` with the rates, pixel space,
    class names and each file's step, label and position in the flat order.

``bundle``
    a ddcli bundle (``.safetensors``): with a run folder or one of its snapshots
    (``RUN_DIR/snapshots/iter_K.pt``) as the input, the set of its last checkpoint or of
    that snapshot, as ``dd distill`` would have written it there.

Evaluator layouts (``ddranking``, ``mtt``, ``dc``: class-major, in each evaluator's
own pixel space, with a manifest) are built by ``ddcli._export_evaluators``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddcli.infra import io as _io
from ddcli.infra.provenance import file_sha256
from ddcli._export_evaluators import FILES, evaluator_manifest, evaluator_set, evaluator_tensors
from ddcli._version import __version__
from ddcli.bundle import Bundle
from ddcli.errors import ConfigError, ExportError
from ddcli.evaluate._sets import set_kind
from ddcli.init_modes import is_fixed
from ddcli.viz import denormalize, to_uint8

FORMATS = ("imagefolder", "pt", "npz", "ddranking", "mtt", "dc", "bundle")
FOLDER_FORMATS = ("imagefolder", "ddranking", "mtt")
MANIFEST = "manifest.json"
IMAGEFOLDER_FORMAT = "ddcli-imagefolder"


@dataclass
class ExportReport:
    """What an export wrote, and what its user should know.

    Attributes:
        format: one of ``FORMATS``.
        path: the file or folder written.
        images: how many images (S * n).
        clipped_pixels: pixel values clipped to [0, 255] (``imagefolder``; 0 otherwise).
        warnings: one line each, for the caller to show (the library prints nothing).
        manifest: the manifest written (folder and ``dc`` exports), else None.
    """

    format: str
    path: Path
    images: int
    clipped_pixels: int = 0
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


def export(bundle: Bundle | str | os.PathLike, fmt: str, path: str | os.PathLike, *,
           data_root: str | os.PathLike | None = None) -> ExportReport:
    """Write ``bundle`` to ``path`` in format ``fmt``; see the module docstring for layouts.

    Files are written atomically; a folder format is built beside ``path`` and renamed
    into place, and replaces ``path`` only if that is empty or an earlier ddcli export.
    ``ddranking``, ``mtt`` and ``dc`` hold every step, class-major, in the evaluator's
    pixel space, with a manifest (for ``dc``, ``PATH.manifest.json`` beside ``PATH``,
    and the same dict under the file's ``"ddcli_manifest"`` key).

    Args:
        bundle: a ``Bundle`` or the path of one (a path also puts its sha256 in manifests).
        fmt: one of ``FORMATS``.
        path: the output file (``pt``, ``npz``, ``dc``) or folder (the others).
        data_root: where the dataset of a ZCA bundle is, for the formats that must undo
            the whitening (``imagefolder``, and ``dc``); the fit is re-done (cached).

    Returns:
        An ``ExportReport``; its ``warnings`` say when pixels were clipped, when the
        data only trains the bundle's fixed init well and what a format could not carry.

    Raises:
        ConfigError: an unknown ``fmt``.
        BundleFormatError: ``bundle`` is a path to a missing or corrupt file.
        ExportError: ``path`` can't be written, or DD-Ranking can't take the dataset.
        ZCAError: a ZCA bundle needs un-whitening and its training data is missing or differs.

    Example:
        >>> from ddcli.export import export
        >>> report = export("m.safetensors", "pt", "m.pt")  # doctest: +SKIP
        >>> torch.load("m.pt", weights_only=True)["images"].shape  # doctest: +SKIP
        torch.Size([100, 1, 28, 28])
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source: dict[str, Any] = {"path": None, "sha256": None}
    if not isinstance(bundle, Bundle) and set_kind(bundle) in ("run", "snapshot"):
        bundle = run_or_snapshot_bundle(bundle, data_root=data_root)
    if not isinstance(bundle, Bundle):
        bundle_path = Path(bundle)
        bundle = Bundle.load(bundle_path)
        source = {"path": str(bundle_path.absolute()), "sha256": file_sha256(bundle_path)}
    path = Path(path)
    _io.check_writable(path, f"the {fmt} export", folder=fmt in FOLDER_FORMATS)
    report = ExportReport(fmt, path, bundle.images.shape[0] * bundle.images.shape[1])
    try:
        if fmt == "bundle":
            bundle.save(path)
        elif fmt == "pt":
            _write_pt(bundle, path)
        elif fmt == "npz":
            _write_npz(bundle, path)
        elif fmt == "imagefolder":
            report.clipped_pixels = _write_imagefolder(bundle, path, report.warnings, data_root)
        else:
            es = evaluator_set(bundle, fmt, data_root=data_root)
            report.warnings.extend(es.warnings)
            report.manifest = _write_evaluator(bundle, fmt, es, path, source)
    except OSError as exc:
        where = exc.filename or path
        raise ExportError(f"can't write {where}: {exc.strerror or exc}") from None
    if report.clipped_pixels:
        total = report.images * bundle.images[0, 0].numel()
        report.warnings.insert(0, (
            f"{report.clipped_pixels} of {total} pixel values "
            f"({report.clipped_pixels / total:.2%}) fell outside [0, 255] and were clipped; "
            "the pt and npz formats keep them exactly"))
    if is_fixed(bundle.init_mode):
        report.warnings.append(
            f"this bundle was distilled for one {bundle.init_mode} init (seed {bundle.seed}); "
            "its images train that init well and other nets much worse, and the export does "
            "not carry the init: keep the bundle, or distill with --init-mode random for "
            "data that transfers")
    return report


def run_or_snapshot_bundle(path: str | os.PathLike, *,
                           data_root: str | os.PathLike | None = None) -> Bundle:
    """The bundle of a run folder's last checkpoint, or of one of its snapshots
    (``RUN_DIR/snapshots/iter_K.pt``), as ``ddcli.engine.reader.run_bundle`` builds it."""
    from ddcli.engine.reader import run_bundle  # the engine imports the evaluator

    path = Path(path)
    if set_kind(path) == "snapshot":
        return run_bundle(path.parent.parent, data_root=data_root, snapshot=path)[0]
    return run_bundle(path, data_root=data_root)[0]


def _flat(bundle: Bundle) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = bundle.flat()  # (N, C, H, W), (N,)
    return images.detach().float().cpu().contiguous(), labels.long().cpu().contiguous()


def _soft(bundle: Bundle) -> dict[str, torch.Tensor]:
    # DD-Ranking and MTT-style code take logits; others want the distributions: give both,
    # and the vectors as learned ("soft_labels": their mass weighs each image's gradient,
    # which a distribution loses), which dd eval trains on.
    if not bundle.has_soft_labels:
        return {}
    return {"label_logits": bundle.flat_label_logits().float().contiguous(),
            "label_probs": bundle.flat_label_probs().float().contiguous(),
            "soft_labels": bundle.soft_labels.reshape(-1, bundle.num_classes).float().contiguous()}


def _write_pt(bundle: Bundle, path: Path) -> None:
    images, labels = _flat(bundle)
    lrs = bundle.lrs.detach().float().cpu().contiguous()
    # plain str/float/list values: torch.load(weights_only=True) reads them without pickle code
    _io.torch_save(path, {"images": images, "labels": labels, "lrs": lrs, **_soft(bundle),
                          "mean": list(bundle.mean), "std": list(bundle.std),
                          "pixel_space": bundle.pixel_space_record,
                          "classes": [str(c) for c in bundle.classes], "steps": bundle.steps})


def _write_npz(bundle: Bundle, path: Path) -> None:
    images, labels = _flat(bundle)
    arrays = {
        "images": images.numpy(),
        "labels": labels.numpy(),
        "lrs": bundle.lrs.detach().float().cpu().numpy(),
        **{k: v.numpy() for k, v in _soft(bundle).items()},
        "mean": np.asarray(bundle.mean, dtype=np.float32),
        "std": np.asarray(bundle.std, dtype=np.float32),
        "pixel_space": np.asarray(json.dumps(bundle.pixel_space_record), dtype=np.str_),
        "classes": np.asarray([str(c) for c in bundle.classes], dtype=np.str_),
        "steps": np.asarray(bundle.steps, dtype=np.int64),
    }

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)

    _io.write_with(path, writer)


def dc_manifest_path(path: str | os.PathLike) -> Path:
    """Where ``--format dc`` puts its manifest beside ``PATH``: ``PATH.manifest.json``
    (``tiny.dc.manifest.json``), the full name kept so ``c.pt`` and ``c.dc`` don't share one."""
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def _write_evaluator(bundle: Bundle, fmt: str, es, path: Path,
                     source: dict[str, Any]) -> dict[str, Any]:
    tensors = evaluator_tensors(es)
    if fmt == "dc":
        # DC/DSA/DM save {"data": [[image_syn, label_syn], ...], ...}; readers take data[-1]
        files = {"data": f"{path.name}: torch.load(path)['data'][-1] = [images, labels]"}
        manifest = evaluator_manifest(bundle, fmt, es, files, source)
        _io.torch_save(path, {"data": [[tensors["images"], tensors["labels"]]],
                              "ddcli_manifest": manifest})
        _io.write_json(dc_manifest_path(path), manifest)
        return manifest
    names = FILES[fmt]
    manifest = evaluator_manifest(bundle, fmt, es, dict(names), source)

    def fill(staging: Path) -> None:
        for role, name in names.items():
            _io.torch_save(staging / name, tensors[role])
        _io.write_json(staging / MANIFEST, manifest)

    _write_folder(path, fill)
    return manifest


def _write_folder(path: Path, fill) -> None:
    """Build a folder beside ``path`` with ``fill(staging)``, then swap it into place."""
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(staging)
        os.chmod(staging, 0o777 & ~_io._umask())  # mkdtemp makes 0700; give the usual mode
        _swap_in(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _write_imagefolder(bundle: Bundle, path: Path, warnings: list[str], data_root) -> int:
    folders = _class_folders(bundle.classes)
    if folders != sorted(folders):
        warnings.append(
            "the class folder names don't sort in label order, so torchvision's ImageFolder "
            f"numbers the classes differently; map them with the labels in {MANIFEST}")
    _check_target(path)
    images, labels = _flat(bundle)
    space = bundle.pixel_space_record
    if space["kind"] == "normalized":
        x01 = denormalize(images, bundle.mean, bundle.std)
    else:
        from ddcli.data.zca import to_unit_pixels  # imports kornia: only for ZCA bundles

        x01 = to_unit_pixels(images, space, data_root=data_root)
    pixels, clipped = to_uint8(x01)  # (N, C, H, W)
    n, digits = bundle.images.shape[1], len(str(bundle.steps - 1))
    records: list[dict[str, Any]] = []

    def fill(staging: Path) -> None:
        seen: dict[tuple[int, int], int] = {}
        for i in range(pixels.shape[0]):
            step, label = i // n, int(labels[i])
            j = seen[step, label] = seen.get((step, label), -1) + 1
            rel = f"{folders[label]}/step{step:0{digits}d}_{j}.png"
            arr = pixels[i].permute(1, 2, 0).numpy()  # (H, W, C)
            img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            (staging / folders[label]).mkdir(exist_ok=True)
            _io.write_with(staging / rel, lambda tmp, im=img: im.save(tmp, format="PNG"))
            records.append({"file": rel, "index": i, "step": step, "label": label,
                            "class": bundle.classes[label]})
        _io.write_json(staging / MANIFEST, _manifest(bundle, records, clipped))

    _write_folder(path, fill)
    return clipped


def _swap_in(staging: Path, path: Path) -> None:
    """Rename the finished folder to ``path``; an earlier export there goes only after."""
    if not path.exists() or not any(path.iterdir()):
        os.replace(staging, path)  # rename(2) also replaces an empty folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, old)
    os.replace(staging, path)
    shutil.rmtree(old)


def _class_folders(classes: list[str]) -> list[str]:
    folders = []
    for c in classes:
        name = "".join("_" if ch in '/\\\0:*?"<>|' else ch for ch in str(c)).strip()
        folders.append("_" + name if name in ("", ".", "..") or name.startswith(".") else name)
    if len(set(folders)) != len(folders):
        raise ExportError("two class names map to the same folder name; rename the classes")
    return folders


def _check_target(path: Path) -> None:
    if path.is_file():
        raise ExportError(f"{path} is a file; this export needs a folder path")
    if path.is_dir() and any(path.iterdir()) and not _is_folder_export(path):
        raise ExportError(
            f"{path} exists and is not an earlier ddcli export; choose a new folder")


def _is_folder_export(path: Path) -> bool:
    try:
        kind = json.loads((path / MANIFEST).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return False
    return kind in {IMAGEFOLDER_FORMAT, *(f"ddcli-{f}" for f in FOLDER_FORMATS)}


def _manifest(bundle: Bundle, records: list[dict[str, Any]], clipped: int) -> dict[str, Any]:
    return {
        "format": IMAGEFOLDER_FORMAT,
        "format_version": 1,
        "ddcli_version": __version__,
        "dataset": bundle.dataset,
        "classes": list(bundle.classes),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "normalize": "x = (pixel / 255 - mean) / std, per channel",
        # the PNGs are [0, 1] pixels; this is the space the bundle's images were in
        "pixel_space": bundle.pixel_space_record,
        "steps": bundle.steps,
        "epochs": bundle.epochs,
        "images_per_class": bundle.images_per_class,
        "lrs": bundle.lrs.tolist(),
        "lr_order": "lrs[t] is the rate of GD step t, which uses the images of step t % steps",
        "model": bundle.model,
        "init_mode": bundle.init_mode,
        "init_scheme": bundle.init_scheme,
        "seed": bundle.seed,
        "clipped_pixels": clipped,
        "images": records,
    }

