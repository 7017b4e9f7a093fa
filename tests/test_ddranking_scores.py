"""DD-Ranking's IOR, HLR and LRS from fractions, and the cached full-data reference."""

import json
import math

import numpy as np
import pytest

import ddcli.evaluate._many_nets as nets
from ddcli.evaluate.ddranking import (
    FullDataProtocol, ddranking_scores, full_data_accuracy, full_data_key, hlr, ior, lrs,
    lrs_alpha,
)

from tests._toy import toy_data


def test_ior_and_hlr():
    assert ior(0.45, 0.26) == pytest.approx(0.19)
    assert hlr(0.84, 0.45) == pytest.approx(0.39)
    assert lrs_alpha(0.19, 0.39) == pytest.approx(-0.1)


def test_lrs_formula_and_its_fixed_points():
    # IOR == HLR: alpha = 0 and LRS = (1 - 1/e) / (e - 1/e) = 1 / (1 + e), not 1/2
    for v in (0.0, 0.2, -0.3):
        assert lrs(v, v) == pytest.approx(1 / (1 + math.e))
    # LRS = 1/2 needs e^alpha = (e + 1/e) / 2, i.e. alpha = ln cosh 1
    a = math.log(math.cosh(1.0))
    assert lrs(2 * a, 0.0) == pytest.approx(0.5)
    assert lrs(1.0, -1.0) == pytest.approx(1.0) and lrs(-1.0, 1.0) == pytest.approx(0.0)
    # DD-Ranking's own expression, fed fractions (its code feeds percentages)
    i, h = 0.12, 0.31
    alpha = 0.5 * i - 0.5 * h
    assert lrs(i, h) == pytest.approx((np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1)))


def test_lrs_is_a_score_in_the_unit_interval_for_any_accuracies():
    grid = np.linspace(0.01, 0.99, 9)
    for syn in grid:
        for rand in grid:
            for full in grid:
                s = ddranking_scores(syn, rand, full)
                assert 0 < s.lrs < 1
                assert s.alpha == pytest.approx(syn - (rand + full) / 2)
    # a better synthetic set scores higher against the same baselines
    assert ddranking_scores(0.6, 0.3, 0.8).lrs > ddranking_scores(0.5, 0.3, 0.8).lrs


def test_percentages_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        ior(45.0, 26.0)
    with pytest.raises(ValueError, match="fraction"):
        lrs(19.0, 39.0)  # what ddranking 0.2.0 does, giving LRS near -0.157
    with pytest.raises(ValueError, match="fraction"):
        hlr(float("nan"), 0.5)


def test_scores_to_dict():
    d = ddranking_scores(0.45, 0.26, 0.84).to_dict()
    assert set(d) == {"syn_acc", "random_acc", "full_acc", "ior", "hlr", "alpha", "lrs"}
    assert json.loads(json.dumps(d)) == d


SPEC = {"name": "mlp", "in_channels": 1, "num_classes": 3, "image_size": 8, "hidden": [16]}


def test_full_data_reference_is_seeded_and_cached(tmp_path, monkeypatch):
    data = toy_data()
    proto = FullDataProtocol(SPEC, epochs=2, n_nets=2, batch_size=32, seed=3)
    a = full_data_accuracy(data, proto, cache_dir=False)
    b = full_data_accuracy(data, proto, cache_dir=False)
    assert a.accuracies == b.accuracies and not a.cached and len(a.accuracies) == 2
    assert a.mean > 0.5  # the toy classes are easy: the reference really trains
    first = full_data_accuracy(data, proto, cache_dir=tmp_path)
    assert first.accuracies == a.accuracies and not first.cached
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["protocol"]["epochs"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("the cached reference must not train again")

    monkeypatch.setattr(nets, "train_accuracies", no_training)
    hit = full_data_accuracy(data, proto, cache_dir=tmp_path)
    assert hit.cached and hit.accuracies == a.accuracies
    monkeypatch.undo()
    # another protocol, model or dataset is another entry
    other = full_data_accuracy(data, FullDataProtocol(SPEC, epochs=1, batch_size=32, seed=3),
                               cache_dir=tmp_path)
    assert not other.cached and len(list(tmp_path.iterdir())) == 2
    assert full_data_key(toy_data(seed=1), proto) != full_data_key(data, proto)
    files[0].write_text("{broken")  # an unreadable entry is recomputed
    assert not full_data_accuracy(data, proto, cache_dir=tmp_path).cached
