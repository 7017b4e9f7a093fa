"""The field's named evaluation protocols: every knob of DC's, DSA's and MTT's evaluation.

``dd eval --protocol dc|dsa|mtt`` trains fresh nets exactly as that paper's released
code evaluates a synthetic set (``evaluate_synset`` in DC/DSA/DM's repository and its
copy in MTT's), so a ddcli figure can be set beside the published one:

- model: ConvNet-3, width 128, instance norm, average pooling, PyTorch's default init;
- ``range(Epoch + 1)`` epochs (301 for Epoch 300, 1001 for 1000) in shuffled batches of
  256, SGD momentum 0.9, weight decay 5e-4;
- the lr times 0.1 after epoch index ``Epoch // 2 + 1``, with a NEW optimiser there (the
  momentum restarts from zero);
- augmentation on every training batch: DC's per-dataset choice (MNIST:
  crop_scale_rotate, ``ddcli.core.dc_augment``; nothing elsewhere), or DSA's ops on
  every dataset (DSA, DM and MTT);
- the rate: 0.01, or for MTT the set's learned rate (MTT learns one; a set with many
  gets their mean);
- one test pass after the last epoch: the final epoch's accuracy is reported, as those
  papers do (no selection).

An explicit setting (``--train-epochs``, ``--train-lr``, ``--augment``, ``--model``,
``--init-scheme``) still wins, and the report says where it departs from the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: The train protocol's rate when none is given (DC's, DSA's and DM's ``lr_net``).
DEFAULT_TRAIN_LR = 0.01
#: The train protocol's epochs when none is given (DC's ``epoch_eval_train``).
DEFAULT_TRAIN_EPOCHS = 300


@dataclass(frozen=True)
class NamedProtocol:
    """One paper's evaluation; ``augment`` maps a dataset name to an augmentation."""

    name: str
    epochs: int  # the paper's Epoch: range(Epoch + 1) epochs are trained
    augment: dict[str, str] | str
    learned_lr: bool  # MTT: the set's learned rate
    source: str

    def augment_for(self, dataset: str) -> str:
        if isinstance(self.augment, str):
            return self.augment
        return self.augment.get(dataset, "none")


NAMED_PROTOCOLS: dict[str, NamedProtocol] = {
    "dc": NamedProtocol(
        "dc", 300, {"mnist": "dc"}, False,
        "Zhao, Mopuri & Bilen 2021 (DC), evaluate_synset + get_daparam"),
    "dsa": NamedProtocol(
        "dsa", 1000, "dsa", False,
        "Zhao & Bilen 2021 (DSA; DM 2023 evaluates the same way), evaluate_synset with DSA"),
    "mtt": NamedProtocol(
        "mtt", 1000, "dsa", True,
        "Cazenavette et al. 2022 (MTT), evaluate_synset with DSA and the learned syn_lr"),
}
MODEL = "convnet"  # ConvNet-3, width 128, instance norm, avg-pool: the registry's default
INIT = "default"  # the papers' nets keep PyTorch's own initialisation


@dataclass(frozen=True)
class Resolved:
    """A named protocol's settings for one set and dataset, and how it got them."""

    train_epochs: int
    decay_epoch: int  # epochs at the first rate
    reset_momentum: bool
    augment: str
    model: str
    init_scheme: str
    train_lr: float
    lr_source: str
    departures: tuple[str, ...]


def resolve(cfg, dataset: str, set_lrs) -> Resolved:
    """Every train-protocol knob of ``cfg`` (an ``EvalConfig``) for ``dataset``.

    ``cfg.protocol`` "train" keeps ddcli's own protocol (the DC settings without DC's
    augmentation, ``train_epochs`` epochs, decay at half); "dc", "dsa" and "mtt" take the
    paper's settings for everything not given explicitly.
    """
    named = NAMED_PROTOCOLS.get(cfg.protocol)
    lr, source = _rate(cfg, named, set_lrs)
    if named is None:
        epochs = cfg.train_epochs or DEFAULT_TRAIN_EPOCHS
        decay = cfg.decay_epoch if cfg.decay_epoch is not None else max(1, epochs // 2)
        return Resolved(epochs, decay, cfg.reset_momentum, cfg.augment or "none",
                        cfg.model, cfg.init_scheme, lr, source, ())
    departures = []
    paper = {"train_epochs": named.epochs + 1, "augment": named.augment_for(dataset),
             "model": MODEL, "init_scheme": INIT}
    chosen = {}
    for key, value in paper.items():
        given = getattr(cfg, key)
        chosen[key] = value if given is None else given
        if given is not None and given != value:
            departures.append(f"{key.replace('_', '-')} {given} (the protocol's: {value})")
    if cfg.train_lr is not None and not named.learned_lr and cfg.train_lr != DEFAULT_TRAIN_LR:
        departures.append(f"train-lr {cfg.train_lr} (the protocol's: {DEFAULT_TRAIN_LR})")
    epochs = chosen["train_epochs"]
    # DC decays after epoch index Epoch // 2 + 1 of range(Epoch + 1): Epoch // 2 + 2 epochs
    # at the first rate (152 of 301); a shortened run keeps the same proportion.
    decay = cfg.decay_epoch if cfg.decay_epoch is not None else min(
        epochs, (epochs - 1) // 2 + 2)
    return Resolved(epochs, decay, True, chosen["augment"], chosen["model"],
                    chosen["init_scheme"], lr, source, tuple(departures))


def _rate(cfg, named: NamedProtocol | None, set_lrs) -> tuple[float, str]:
    if cfg.train_lr is not None:
        return cfg.train_lr, "--train-lr"
    if named is not None and named.learned_lr:
        if set_lrs is not None and set_lrs.numel():
            n = set_lrs.numel()
            return float(set_lrs.mean()), ("the set's learned rate" if n == 1 else
                                           f"mean of the set's {n} learned rates")
        return DEFAULT_TRAIN_LR, "MTT's protocol uses the set's learned rate; the set has none"
    return DEFAULT_TRAIN_LR, "the field's rate (DC, DSA, DM)"


def replace_resolved(cfg, r: Resolved):
    """``cfg`` with the resolved knobs filled in (what the report records)."""
    return dataclasses.replace(cfg, train_epochs=r.train_epochs, decay_epoch=r.decay_epoch,
                               reset_momentum=r.reset_momentum, augment=r.augment,
                               model=r.model, init_scheme=r.init_scheme)
