"""Sets for other evaluators: DD-Ranking, MTT and DC/DSA/DM, each in its own pixel space.

A released set is only as good as its preprocessing record. These evaluators normalise
their test data with their own statistics, which are not ddcli's: DC (VICO-UoE
DatasetCondensation ``utils.get_dataset``), MTT (``utils.get_dataset``) and DD-Ranking
(``ddranking/utils/data.py``) all use CIFAR-10 std (0.2023, 0.1994, 0.2010), against the
true (0.2470, 0.2435, 0.2616) that ddcli uses, and all three reuse the CIFAR-10
statistics for CIFAR-100. Images normalised with ddcli's statistics are therefore off by
about 1.22x for them, silently. Each export here converts through [0, 1] pixels into the
evaluator's space, or keeps ZCA space for the evaluators that re-fit kornia's ZCA
(DD-Ranking, MTT), and records the space in its manifest.

All three read a flat, **class-major** set (DD-Ranking rebuilds labels as
``[0] * ipc + [1] * ipc + ...`` and ignores any given), so every step of the bundle is
included and sorted by class (``Bundle.class_major_order``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ddcli._version import __version__
from ddcli.bundle import Bundle
from ddcli.data._realdata import normalized_space
from ddcli.errors import UnsupportedExportError

# What each evaluator normalises with, by ddcli dataset name (sources: module docstring).
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
EVALUATOR_STATS: dict[str, dict[str, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "dc": {"mnist": ((0.1307,), (0.3081,)), "fashion-mnist": ((0.2861,), (0.3530,)),
           "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
           "cifar10": _CIFAR, "cifar100": _CIFAR},
    "mtt": {"cifar10": _CIFAR, "cifar100": _CIFAR},
    "ddranking": {"cifar10": _CIFAR, "cifar100": _CIFAR},
}
# The names the evaluators' own --dataset / dataset= arguments take.
EVALUATOR_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST",
                      "fashion-mnist": "FashionMNIST", "svhn": "SVHN"}
EVALUATORS = {
    "ddranking": "DD-Ranking (`pip install ddranking`): LabelRobustScoreHard/Soft",
    "mtt": "MTT (Cazenavette et al. 2022) and the trajectory-matching code built on it",
    "dc": "DC / DSA / DM (VICO-UoE DatasetCondensation): evaluate_synset",
}
ZCA_AWARE = ("ddranking", "mtt")  # both re-fit kornia ZCAWhitening(eps=0.1) with use_zca/--zca
FILES = {
    "ddranking": {"images": "images.pt", "labels": "labels.pt", "lr": "lr.pt"},
    "mtt": {"images": "images_best.pt", "labels": "labels_best.pt", "lr": "lr_best.pt"},
}
ORDER = ("class-major: image i has class i // ipc; within a class, the bundle's step 0 "
         "images come first (in slot order), then step 1's, and so on, so all steps are "
         "included; source_index[i] is the image's position in Bundle.flat() (step-major)")


@dataclass
class EvaluatorSet:
    """A bundle laid out for one evaluator: what its files hold."""

    images: Tensor  # (N, C, H, W), class-major, in `space`
    labels: Tensor  # (N,) int64 hard labels, or (N, C) float32 logits of the soft labels
    order: Tensor  # (N,) positions in bundle.flat()
    space: dict[str, Any]
    lr: float  # the mean learned rate: these evaluators train with one lr
    soft: bool
    warnings: list[str] = field(default_factory=list)
    # (N,) each soft label's sum, which the logits drop (softmax gives rows summing to 1)
    label_mass: Tensor | None = None


def evaluator_set(bundle: Bundle, fmt: str, *,
                  data_root: str | os.PathLike | None = None) -> EvaluatorSet:
    """Convert ``bundle`` for evaluator ``fmt`` (``ddranking``, ``mtt`` or ``dc``).

    Raises:
        UnsupportedExportError: DD-Ranking can't evaluate the bundle's dataset or channel count.
        ZCAError: a ZCA bundle must be un-whitened for DC and its data can't be found.
    """
    name = bundle.dataset.strip().lower()
    warnings: list[str] = []
    if fmt == "ddranking" and (name not in EVALUATOR_STATS["ddranking"]
                               or bundle.input_shape[0] != 3):
        raise UnsupportedExportError(
            f"DD-Ranking evaluates only CIFAR-10/100, TinyImageNet and ImageNet, with 3-channel "
            f"images; this bundle is {bundle.dataset} with {bundle.input_shape[0]}-channel "
            "images: export it as dc, mtt, pt or npz instead")
    src = bundle.pixel_space_record
    target = _target_space(bundle, fmt, name, src, warnings)
    order = bundle.class_major_order()
    images = bundle.images.detach().float().cpu().reshape(-1, *bundle.input_shape)[order]
    if target != src:
        from ddcli.data.zca import from_unit_pixels, to_unit_pixels  # kornia: only when needed

        images = from_unit_pixels(to_unit_pixels(images, src, data_root=data_root), target)
    soft = bundle.has_soft_labels and fmt != "dc"
    if bundle.has_soft_labels and not soft:
        warnings.append("DC/DSA/DM train with hard labels: the soft labels are not in this "
                        "export (ddranking, mtt, pt and npz carry them)")
    labels = (bundle.flat_label_logits()[order].float() if soft
              else bundle.labels.reshape(-1)[order].long())
    mass = _label_mass(bundle, fmt, order, warnings) if soft else None
    return EvaluatorSet(images=images.contiguous(), labels=labels.contiguous(), order=order,
                        space=target, lr=float(bundle.lrs.detach().mean()), soft=soft,
                        warnings=warnings, label_mass=mass)


def _label_mass(bundle: Bundle, fmt: str, order: Tensor, warnings: list[str]) -> Tensor:
    """Each soft label's sum in the export's order: (N,). ddcli trains on the label vectors
    as learned, and a row's mass scales its image's gradient (``core.steps.inner_loss``);
    the evaluator's logits keep only the normalised rows, so say what that drops."""
    mass = bundle.soft_labels.detach().float().sum(-1).reshape(-1)[order]
    if not torch.allclose(mass, torch.ones_like(mass), atol=1e-3):
        warnings.append(
            f"the learned labels' mass (rows sum to {mass.min().item():.2f} to "
            f"{mass.max().item():.2f}) scales each image's gradient in ddcli's training, and "
            f"{fmt}'s labels hold normalised rows: {fmt}'s own code trains without it, at a "
            "rate (lr) learned with it; manifest.json's label_mass has it, and `dd eval` of "
            "this export puts it back")
    return mass


def _target_space(bundle: Bundle, fmt: str, name: str, src: dict[str, Any],
                  warnings: list[str]) -> dict[str, Any]:
    if src["kind"] == "zca" and fmt in ZCA_AWARE:
        return src  # the evaluator re-fits the same ZCA on the same [0, 1] training images
    stats = EVALUATOR_STATS[fmt].get(name)
    if stats is None:
        warnings.append(
            f"{fmt}'s code has no {bundle.dataset} normalisation to match; the images keep the "
            "bundle's pixel space, recorded in the manifest: normalise the test data alike")
        return src
    if src["kind"] == "zca":
        warnings.append(f"{fmt} has no ZCA: the images were un-whitened to [0, 1] pixels and "
                        f"normalised with {fmt}'s mean/std")
    return normalized_space(*stats)


def evaluator_manifest(bundle: Bundle, fmt: str, es: EvaluatorSet, files: dict[str, str],
                       source: dict[str, Any]) -> dict[str, Any]:
    """The manifest.json of an evaluator export: everything needed to use the files right."""
    space = es.space
    if space["kind"] == "normalized":
        how = "x = (pixel / 255 - mean) / std, per channel"
    else:
        how = (f"x = ZCA(pixel / 255): kornia.enhance.ZCAWhitening(eps={space['eps']}) fitted "
               f"on the {space['dataset']} training images in [0, 1]; run the evaluator with "
               "its ZCA option (DD-Ranking use_zca=True, MTT --zca)")
    ipc = bundle.steps * bundle.images_per_class
    return {
        "format": f"ddcli-{fmt}",
        "format_version": 1,
        "ddcli_version": __version__,
        "evaluator": EVALUATORS[fmt],
        "dataset": bundle.dataset,
        "evaluator_dataset": EVALUATOR_DATASETS.get(bundle.dataset.strip().lower(), bundle.dataset),
        "classes": list(bundle.classes),
        "num_classes": bundle.num_classes,
        "ipc": ipc,
        "images": int(es.images.shape[0]),
        "image_shape": list(bundle.input_shape),
        "pixel_space": space,
        "mean": space.get("mean"),
        "std": space.get("std"),
        "normalize": how,
        "order": ORDER,
        "source_index": es.order.tolist(),
        "steps": bundle.steps,
        "images_per_class_per_step": bundle.images_per_class,
        "epochs": bundle.epochs,
        "labels": ("soft: float32 (N, classes) logits, log of the normalised learned label "
                   "vectors (softmax gives them back); times label_mass[i] they are the "
                   "vectors ddcli trains on" if es.soft else "hard: int64 (N,)"),
        "soft_labels": es.soft,
        "label_mass": None if es.label_mass is None else es.label_mass.tolist(),
        "lr": es.lr,
        "lrs": bundle.lrs.detach().tolist(),
        "lr_note": ("lr is the mean of the bundle's learned rates (these evaluators train with "
                    "one rate); lrs[t] is the rate of GD step t, which used the images of step "
                    "t % steps in the bundle's own replay"),
        "files": files,
        "source": source,
        "model": bundle.model,
        "init_mode": bundle.init_mode,
        "seed": bundle.seed,
        "provenance": bundle.provenance,
    }


def evaluator_tensors(es: EvaluatorSet) -> dict[str, Tensor]:
    """The tensors the evaluator's files hold, by role (``lr`` is 0-dim)."""
    return {"images": es.images, "labels": es.labels,
            "lr": torch.tensor(es.lr, dtype=torch.float32)}
