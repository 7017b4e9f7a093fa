"""The fast k-means: same fixed point as a plain Lloyd loop, bounded, seeded."""

import torch

from ddcli.evaluate import _baselines
from ddcli.evaluate._baselines import _sq_distances, kmeans, kmeans_lockstep


def _reference_lloyd(x, centres, iterations=500):
    """Textbook Lloyd in float64 from given centres: cdist, argmin, means, until fixed."""
    x, c = x.double(), centres.double()
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iterations):
        c = torch.stack([x[assign == j].mean(0) if (assign == j).any() else c[j]
                         for j in range(len(c))])
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return c, assign


def test_matmul_distances_equal_cdist_also_in_chunks():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(257, 31, generator=g), torch.randn(7, 31, generator=g)
    want = torch.cdist(c.double(), x.double()).pow(2)  # (k, N)
    for cols in (2048, 10, 1):  # one block; blocks of 10 points; one point a block
        got = _sq_distances(x, (x * x).sum(1), c, cols=cols)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_run_to_convergence_it_is_lloyds_fixed_point(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(80, 5, generator=g) + 3 * torch.randn(1, 5, generator=g)
                   for _ in range(6)])  # (480, 5): 6 overlapping blobs
    seeds = []
    original = _baselines._kmeans_pp_lockstep
    monkeypatch.setattr(_baselines, "_kmeans_pp_lockstep",
                        lambda *a: seeds.append(original(*a)[0]) or seeds[-1][None])
    centres, sizes = kmeans(x, 6, generator=torch.Generator().manual_seed(2), iterations=500,
                            tol=0.0)
    ref_centres, ref_assign = _reference_lloyd(x, seeds[0])
    torch.testing.assert_close(centres.double(), ref_centres, rtol=1e-4, atol=1e-4)
    assert sizes.tolist() == torch.bincount(ref_assign, minlength=6).tolist()


def test_iterations_are_bounded_and_the_tolerance_stops_early(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 20, generator=g)  # no structure: Lloyd creeps on for long
    calls = []
    original = _baselines._sq_distances
    monkeypatch.setattr(_baselines, "_sq_distances",
                        lambda *a, **k: calls.append(1) or original(*a, **k))

    def lloyd_steps(**kw):
        calls.clear()
        kmeans(x, 8, generator=torch.Generator().manual_seed(0), **kw)
        return len(calls) - 8 - 1  # minus k-means++ (k passes) and the first assignment

    assert lloyd_steps(iterations=3, tol=0.0) == 3
    unbounded = lloyd_steps(iterations=1000, tol=0.0)
    default = lloyd_steps()
    assert 3 < default < unbounded  # the tolerance stops it early
    assert lloyd_steps(tol=1e-2) < default


def test_seeded_and_exact_for_k_at_least_n():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 10, generator=g)
    a = kmeans(x, 5, generator=torch.Generator().manual_seed(9))
    b = kmeans(x, 5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    centres, sizes = kmeans(x[:3], 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(centres, x[torch.tensor([0, 1, 2, 0, 1])]) and sizes.tolist() == [1] * 5


def test_lockstep_runs_are_the_runs_one_at_a_time():
    # bit-equal on one thread; with more, the wider matmul may split its work (and round)
    # differently, as k-means already does across thread counts (docs/benchmarks.md)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_lockstep_against_one_at_a_time()
    finally:
        torch.set_num_threads(threads)


def _check_lockstep_against_one_at_a_time():
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(150, 12, generator=g) + 2 * torch.randn(1, 12, generator=g)
                   for _ in range(5)])  # (750, 12)
    for kw in ({}, {"iterations": 4}, {"tol": 0.0, "iterations": 300}, {"tol": 1e-2}):
        gens = [torch.Generator().manual_seed(s) for s in range(6)]
        together = kmeans_lockstep(x, 5, gens, **kw)
        alone = [kmeans(x, 5, generator=torch.Generator().manual_seed(s), **kw)
                 for s in range(6)]
        for (c1, n1), (c2, n2) in zip(together, alone):
            assert torch.equal(c1, c2) and torch.equal(n1, n2)
        # the runs differ from each other, so they really are separate runs
        assert not all(torch.equal(together[0][0], c) for c, _ in together[1:])


def test_lockstep_runs_stop_at_their_own_iteration(monkeypatch):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1500, 16, generator=g)
    widths = []
    original = _baselines._nearest
    monkeypatch.setattr(_baselines, "_nearest",
                        lambda x, x_sq, c: widths.append(c.shape[0]) or original(x, x_sq, c))
    kmeans_lockstep(x, 6, [torch.Generator().manual_seed(s) for s in range(4)])
    # all four runs start together, then drop out one by one as each one's rule stops it
    assert widths[0] == 4 and widths[-1] < 4 and widths == sorted(widths, reverse=True)
