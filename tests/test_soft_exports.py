"""A soft-label set and its evaluator exports train on the same targets.

ddcli trains on the label vectors as learned: a row's mass scales its image's gradient
(``core.steps.inner_loss``). DD-Ranking and MTT files hold logits of the normalised rows,
so the mass is dropped there: the export warns, its manifest keeps the mass, and ddcli's
reader puts it back, so `dd eval` of the export and of the bundle train alike.
"""

import json

import pytest
import torch

from ddcli import Bundle
from ddcli.evaluate import evaluate
from ddcli.evaluate._sets import load_image_set
from ddcli.export import export
from tests._pixels import uint8_data
from tests.test_export_evaluators import CIFAR_MEAN, CIFAR_STD, cifar_bundle


@pytest.mark.parametrize("fmt", ["ddranking", "mtt"])
def test_export_says_what_it_drops_and_reads_back_the_targets_trained_on(tmp_path, fmt):
    b = cifar_bundle(soft=True)  # rows: one-hot + up to 0.2 per class, sums near 2
    mass = b.soft_labels.sum(-1).reshape(-1)  # (N,) in flat() order
    assert mass.min() > 1.5  # the property under test: rows far from summing to 1
    report = export(b, fmt, tmp_path / "e")
    warning = next(w for w in report.warnings if "mass" in w)
    assert f"{mass.min().item():.2f} to {mass.max().item():.2f}" in warning
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    order = torch.tensor(manifest["source_index"])
    torch.testing.assert_close(torch.tensor(manifest["label_mass"]), mass[order])
    # The file's own rows are normalised, as the evaluators read them ...
    labels = torch.load(tmp_path / "e" / ("labels.pt" if fmt == "ddranking" else
                                          "labels_best.pt"), weights_only=True)
    torch.testing.assert_close(labels.softmax(-1).sum(-1), torch.ones(len(order)))
    # ... and ddcli reads back the very vectors the bundle trains on, slot by slot.
    s = load_image_set(tmp_path / "e")
    want = b.soft_labels.reshape(-1, 10)[order]
    torch.testing.assert_close(s.soft_labels.reshape(-1, 10), want, atol=1e-5, rtol=1e-5)


def test_a_hard_label_export_records_no_mass(tmp_path):
    export(cifar_bundle(), "ddranking", tmp_path / "e")
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["label_mass"] is None


def test_dd_eval_of_the_export_and_of_the_bundle_agree(tmp_path):
    b = cifar_bundle(soft=True, k=1, classes=10)
    b.classes = [f"c{c}" for c in range(10)]  # uint8_data's class names
    path = b.save(tmp_path / "b.safetensors")
    export(path, "ddranking", tmp_path / "e")
    data = uint8_data("cifar10", n_train=20, n_test=40, classes=10, mean=CIFAR_MEAN,
                      std=CIFAR_STD)
    # One batch per epoch holds every image, so the files' order doesn't matter; at this
    # rate, training on the normalised rows (half the mass) ends elsewhere.
    kw = dict(protocol="train", n_nets=2, train_epochs=4, batch_size=64, train_lr=0.2,
              data=data, model="convnet")
    bundle_acc = evaluate(path, **kw).primary.accuracies
    export_acc = evaluate(tmp_path / "e", **kw).primary.accuracies
    assert export_acc == bundle_acc
