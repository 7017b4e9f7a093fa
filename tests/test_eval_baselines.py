"""Real-data baselines: shapes and classes, k-means quality, the 1-NN classifier."""

import pytest
import torch

from ddcli.data import load_dataset
from ddcli.errors import ConfigError
from ddcli.evaluate import (
    BASELINES, build_baseline, evaluate_bundle, kmeans, kmeans_sets, knn_accuracy,
)

from tests._toy import toy_data
from tests.conftest import FIXTURES

# 2 steps x (10 classes x 2 images), class-major within each step
LABELS = torch.arange(10).repeat_interleave(2).expand(2, 20)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", root=FIXTURES, download=False)


def _same_class_image(img, data, c):
    """Whether img is exactly one of class c's training images."""
    x = data.train_x[data.train_y == c]
    return bool((x == img).flatten(1).all(1).any())


@pytest.mark.parametrize("name", [b for b in BASELINES if b != "knn"])
def test_set_baselines_have_the_layout_and_classes(mnist, name):
    calls = []

    def score(cands):
        calls.append(cands.shape)
        return torch.arange(cands.shape[0], dtype=torch.float64)  # the last candidate wins

    imgs = build_baseline(name, LABELS, mnist, seed=3, candidates=4, score=score)
    assert imgs.shape == (2, 20, 1, 28, 28) and imgs.dtype == torch.float32
    flat, labels = imgs.reshape(40, 1, 28, 28), LABELS.reshape(-1)
    if name in ("random-real", "optimized-real"):
        assert all(_same_class_image(flat[i], mnist, int(labels[i])) for i in range(40))
        assert len({tuple(v.flatten().tolist()) for v in flat}) == 40  # no repeats
    if name == "optimized-real":
        assert calls == [(4, 2, 20, 1, 28, 28)]
        # the chosen draw is the top-scoring candidate (index 3)
        cand3 = build_baseline(name, LABELS, mnist, seed=3, candidates=4,
                               score=lambda c: torch.tensor([0.0, 0, 0, 1]))
        assert torch.equal(imgs, cand3)
    if name == "class-mean":
        for c in range(10):
            mean = mnist.train_x[mnist.train_y == c].mean(0)
            torch.testing.assert_close(flat[labels == c], mean.expand(4, 1, 28, 28))
    if name in ("kmeans", "class-mean"):
        # every slot's image is closest to its own class's mean image
        means = torch.stack([mnist.train_x[mnist.train_y == c].mean(0) for c in range(10)])
        nearest = torch.cdist(flat.flatten(1), means.flatten(1)).argmin(1)
        assert (nearest == labels).float().mean() >= 0.9
    again = build_baseline(name, LABELS, mnist, seed=3, candidates=4, score=score)
    assert torch.equal(imgs, again)  # seeded


def test_random_real_draws_differ_by_seed(mnist):
    a = build_baseline("random-real", LABELS, mnist, seed=0)
    b = build_baseline("random-real", LABELS, mnist, seed=1)
    assert not torch.equal(a, b)


def test_kmeans_sets_of_many_seeds_are_each_seeds_set(mnist):
    events = []
    threads = torch.get_num_threads()  # bit-equal on one thread (see test_kmeans.py)
    torch.set_num_threads(1)
    try:
        together = kmeans_sets(LABELS, mnist, [3, 4, 11], on_progress=events.append)
        singles = [build_baseline("kmeans", LABELS, mnist, seed=s) for s in (3, 4, 11)]
    finally:
        torch.set_num_threads(threads)
    assert together.shape == (3, 2, 20, 1, 28, 28)
    for got, single in zip(together, singles):
        assert torch.equal(got, single)
    assert not torch.equal(together[0], together[1])
    assert [(e.label, e.done, e.total) for e in events] == [("kmeans", i, 10) for i in range(1, 11)]


def test_kmeans_lowers_within_class_distance_versus_random_picks(mnist):
    for c in range(10):
        x = mnist.train_x[mnist.train_y == c].flatten(1)
        centres, sizes = kmeans(x, 4, generator=torch.Generator().manual_seed(c))
        assert centres.shape == (4, 784) and int(sizes.sum()) == x.shape[0]
        inertia = torch.cdist(x, centres).min(1).values.pow(2).sum()
        for seed in range(5):
            picks = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:4]]
            assert inertia < torch.cdist(x, picks).min(1).values.pow(2).sum()


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in true])
    centres, sizes = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    assert sorted(sizes.tolist()) == [50, 50, 50]
    assert torch.cdist(true, centres).min(1).values.max() < 0.1


def test_knn_on_a_trivially_separable_set():
    data = toy_data()
    means = torch.stack([data.train_x[data.train_y == c].mean(0) for c in range(3)])
    assert knn_accuracy(means, torch.arange(3), data.test_x, data.test_y) == 1.0
    assert knn_accuracy(means, torch.tensor([1, 2, 0]), data.test_x, data.test_y) == 0.0
    # 2-D points: the nearest reference decides, chunked or not
    refs, labels = torch.tensor([[0.0, 0.0], [5.0, 5.0]]), torch.tensor([0, 1])
    q = torch.tensor([[0.4, -0.2], [4.0, 6.0], [2.0, 2.0], [3.0, 3.0]])
    assert knn_accuracy(refs, labels, q, torch.tensor([0, 1, 0, 1]), chunk=1) == 1.0


def test_unknown_baseline_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown baseline 'nope'"):
        evaluate_bundle("whatever.safetensors", baselines=["nope"])
    with pytest.raises(ConfigError):
        build_baseline("knn", LABELS, toy_data())


def test_compare_rows_and_margin(tmp_path):
    from ddcli import DistillConfig, distill

    c = DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
        "optim": {"iterations": 4, "meta_lr": 0.05},
        "run": {"checkpoint_every": 0, "log_every": 0, "device": "cpu"},
    })
    distill(c, out=tmp_path / "b.safetensors", data=toy_data())
    report = evaluate_bundle(tmp_path / "b.safetensors", data=toy_data(), n_nets=3,
                             baselines=BASELINES, candidates=2)
    labels = [r.label for r in report.rows]
    assert labels == [
        "distilled · stored init", "distilled · fresh random inits",
        "random-real · stored init", "optimized-real · stored init", "kmeans · stored init",
        "class-mean · stored init", "knn · distilled", "knn · random-real",
        "knn · optimized-real", "knn · kmeans", "knn · class-mean",
    ]
    # stochastic baselines: one draw per net; the class mean is one set
    assert [r.n for r in report.rows[2:6]] == [3, 3, 3, 1]
    margin = report.margin_over_random_real
    assert margin == pytest.approx(report.primary.mean - report.row("random-real").mean)
