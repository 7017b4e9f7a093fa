"""A set made to fit what it is evaluated with: the dataset's normalisation and class
order, the model it trains, its soft labels, and what its record says about how it was
made (its provenance, whether its rates were learned, which validation images it saw)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ddcli.data import RealData, default_model
from ddcli.errors import ConfigError, ModelError
from ddcli.models import check_functional, create_model, model_label
from ddcli.evaluate._report import EvalConfig
from ddcli.evaluate._sets import ImageSet


def match_dataset(
    s: ImageSet, data: RealData, notes: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The set's images and labels in the dataset's normalisation and class order."""
    want = (data.in_channels, data.image_size, data.image_size)
    if s.input_shape != want:
        shape = lambda t: "x".join(map(str, t))  # noqa: E731
        raise ConfigError(f"{s.source} has {shape(s.input_shape)} images but {data.name}'s are "
                          f"{shape(want)}; pick the dataset the set was made from with --dataset")
    labels = s.labels
    if s.classes is not None and list(s.classes) != list(data.classes):
        if int(labels.max()) >= len(s.classes):
            raise ConfigError(f"{s.source} has labels beyond its {len(s.classes)} class names")
        if set(s.classes) <= set(data.classes):
            mapping = torch.tensor([data.classes.index(c) for c in s.classes])
            labels = mapping[labels]
            notes.append(f"labels mapped to {data.name}'s classes by name")
        elif len(s.classes) == data.num_classes:
            notes.append(f"the set's class names differ from {data.name}'s; labels used as indices")
        else:
            raise ConfigError(f"{s.source} has {len(s.classes)} classes but {data.name} has "
                              f"{data.num_classes}")
    if int(labels.max()) >= data.num_classes:
        raise ConfigError(f"{s.source} has labels up to {int(labels.max())} but {data.name} has "
                          f"{data.num_classes} classes")
    images = s.images
    if s.mean is None or s.std is None:
        notes.append(f"the {s.kind} set carries no mean/std: taken as normalised like {data.name}")
    elif not (_close(s.mean, data.mean) and _close(s.std, data.std)):
        c = (len(data.mean), 1, 1)
        mean_s, std_s = torch.tensor(s.mean).view(c), torch.tensor(s.std).view(c)
        mean_d, std_d = torch.tensor(data.mean).view(c), torch.tensor(data.std).view(c)
        # Back to [0, 1] pixels with the set's statistics, then the dataset's: the test
        # images and the training images must share one normalisation.
        images = (images * std_s + mean_s - mean_d) / std_d
        if s.kind == "imagefolder":
            notes.append(f"pixels read as [0, 1] and normalised with {data.name}'s mean/std")
        else:
            notes.append(f"re-normalised the images from the set's mean {_fmt(s.mean)} / std "
                         f"{_fmt(s.std)} to {data.name}'s {_fmt(data.mean)} / {_fmt(data.std)}")
    return images, labels


def set_provenance(s: ImageSet) -> dict[str, Any] | None:
    """How the set was made: the last process that worked on a ddcli bundle."""
    if s.bundle is None:
        return None
    return dict(s.bundle.provenance) or None


def soft_labels_of(s: ImageSet, data: RealData) -> torch.Tensor | None:
    """The set's learned labels, with their class columns in the dataset's order."""
    soft = s.bundle.soft_labels if s.bundle is not None else getattr(s, "soft_labels", None)
    if soft is None or s.classes is None or list(s.classes) == list(data.classes):
        return soft
    out = torch.zeros(*soft.shape[:-1], data.num_classes)
    for c, name in enumerate(s.classes):
        out[..., data.classes.index(name)] = soft[..., c]
    return out


def _close(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7)
                                    for x, y in zip(a, b))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def build_model(s: ImageSet, cfg: EvalConfig, protocol: str, data: RealData):
    own = s.model  # the spec the set was made for (bundles, ddcli image folders)
    if protocol == "replay":
        assert own is not None
        if cfg.model is not None and cfg.model != own.get("name"):
            if not _same_factory(cfg.model, own.get("name")):
                raise ConfigError(f"--model applies to --protocol train; replay runs the bundle's "
                                  f"own {own.get('name')} (its rates were learned for it)")
            own = {**own, "name": cfg.model}  # your model's file, moved since the bundle was made
        model = create_model(**own)
    elif cfg.model is None and own is not None:
        model = create_model(**own)
    else:
        name = cfg.model or default_model(data.name)
        c, h = data.in_channels, data.image_size
        try:
            model = create_model(name, in_channels=c, num_classes=data.num_classes, image_size=h)
        except ModelError as exc:
            raise ModelError(f"--model {name} can't take this set's {c}x{h}x{h} images: "
                             f"{exc}") from None
    check_functional(model)
    return model


def _same_factory(given: str, recorded: Any) -> bool:
    """Both name your own model's factory, by the same name (the file may have moved)."""
    return (isinstance(recorded, str) and ":" in given and ":" in recorded
            and model_label(given) == model_label(recorded))


def rates_learned(s: ImageSet) -> bool:
    """False for a bundle whose objective kept its rates at --step-lr (its record says so)."""
    return s.bundle is None or s.bundle.extra.get("objective", {}).get("learned_rates", True)


def validation_seen(s: ImageSet, size: int, dataset: str) -> str | None:
    """Why a --validation score of a distilled set is optimistic, if it is: the split's
    images (the first ``size`` of one fixed permutation, ``validation_split``) include
    training images the set was distilled on. A run held out M images; ``size`` > M
    scores on ``size`` - M it saw, and M = 0 (every run before ``--validation``) on all."""
    config = getattr(s.bundle, "config", None) or {}
    data = config.get("data") or {}
    if s.bundle is None or data.get("dataset", dataset) != dataset:
        return None  # not distilled here (an image file, or another dataset's set)
    held = int(data.get("validation") or 0)
    if held >= size:
        return None
    if held == 0:
        return (f"{s.source} was distilled on every training image: the {size:,} validation "
                "images were real data for it, so this score is optimistic")
    return (f"{s.source} held out {held:,} training images; --validation {size:,} also "
            f"scores on {size - held:,} it was distilled on (--validation {held:,} scores "
            "on unseen images only)")
