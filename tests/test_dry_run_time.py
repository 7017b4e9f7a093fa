"""`dd distill --dry-run`'s time estimate: real iterations timed, the budget extrapolated.

No timing assertions: the tests check what is timed, counted and printed, and that the
estimate follows the budget.
"""

import json

import pytest

from ddcli.engine import timing
from ddcli.engine.timing import TimeEstimate, estimate_time, format_duration

from tests._cli import run
from tests._toy import toy_config, toy_data


@pytest.fixture(autouse=True)
def _few_iterations(monkeypatch):
    monkeypatch.setattr(timing, "_ENOUGH_S", 0.0)  # the least: a warm-up and 2 timed


def test_estimate_times_real_iterations_and_counts_the_evaluations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = toy_data()
    calls = []
    real = timing._timed
    monkeypatch.setattr(timing, "_timed", lambda fn: calls.append(fn) or real(fn))
    est = estimate_time(toy_config(run={"eval_every": 3}), data=data)
    # a warm-up, 2 timed iterations, 1 timed evaluation
    assert len(calls) == 4 and est.measured == 2
    assert est.iterations == 8 and est.evaluations == 3  # at 3, 6 and the last, 8
    assert est.s_per_iteration > 0 and est.s_per_eval > 0
    assert est.total_s == pytest.approx(8 * est.s_per_iteration + 3 * est.s_per_eval)
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing here
    plain = estimate_time(toy_config(optim={"iterations": 80}), data=data)
    assert (plain.iterations, plain.evaluations, plain.s_per_eval) == (80, 0, 0.0)
    assert plain.total_s == 80 * plain.s_per_iteration


def test_several_processes_are_timed_as_one_process_s_share():
    cfg = toy_config(init={"mode": "random", "n_nets": 8, "sample_n_nets": 5}, run={"nproc": 2})
    share = timing._one_process_share(cfg, 2)
    assert share.init.sample_n_nets == 3 and share.run.nproc == 1
    assert timing._one_process_share(cfg, 1).init.sample_n_nets == 5


def test_estimate_scales_with_the_budget():
    est = TimeEstimate(iterations=100, s_per_iteration=0.5, measured=2, evaluations=4,
                       s_per_eval=2.0)
    assert est.total_s == 58.0 and est.to_dict()["total_s"] == 58.0
    assert [format_duration(s) for s in (0.25, 42, 1020, 3 * 3600, 3 * 86400)] == [
        "0.25 s", "42 s", "17 min", "3.0 h", "3.0 days"]


TINY = ("--steps", "1", "--epochs", "1", "--model", "mlp", "--batch-size", "32")


@pytest.mark.parametrize("iterations", [10, 3000])
def test_dry_run_prints_the_time_of_the_whole_budget(tmp_path, fixture_root, iterations):
    args = ("distill", "mnist", "--data-root", fixture_root, "--dry-run", *TINY,
            "--iterations", iterations, "--eval-every", 5, "-o", tmp_path / "m.safetensors")
    r = run(*args)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("time estimate: about "))
    assert f" = {iterations:,} iterations x " in line
    assert f" + {iterations // 5:,} evaluations x " in line
    assert "this run" in r.stdout  # beside the memory table
    r = run(*args, "--json")
    t = json.loads(r.stdout)["time_estimate"]
    assert (t["iterations"], t["evaluations"]) == (iterations, iterations // 5)
    assert t["total_s"] == pytest.approx(
        iterations * t["s_per_iteration"] + iterations // 5 * t["s_per_eval"])
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.run").exists()


def test_dry_run_does_not_time_what_would_not_fit(tmp_path, fixture_root, monkeypatch):
    monkeypatch.setattr("ddcli.infra.device.available_memory", lambda device: 1024)
    monkeypatch.setattr(timing, "estimate_time", lambda *a, **k: pytest.fail("timed"))
    r = run("distill", "mnist", "--data-root", fixture_root, "--dry-run", *TINY)
    assert r.exit_code == 0, r.output
    assert "time estimate: not measured: this run's estimated peak" in r.stdout
    r = run("distill", "mnist", "--data-root", fixture_root, "--dry-run", *TINY, "--json")
    out = json.loads(r.stdout)
    assert out["time_estimate"] is None and "free on cpu" in out["time_not_measured"]


def test_dry_run_is_a_library_call_the_cli_only_prints(fixture_root):
    from ddcli.engine.dry_run import dry_run
    from ddcli.errors import ConfigError
    from ddcli.layering import build_config

    cfg = build_config(overrides={"data": {"dataset": "mnist", "data_root": str(fixture_root)},
                                  "synth": {"steps": 1, "epochs": 1},
                                  "optim": {"iterations": 7}, "run": {"device": "cpu"}})
    r = dry_run(cfg)
    assert (r.dataset, r.model, r.nproc) == ("mnist", "lenet", 1)
    assert set(r.estimate.modes) == {"full", "stepwise", "recompute"}
    assert r.timing is not None and r.timing.iterations == 7
    peaks = r.peak_rss()
    assert peaks is None or all(v > 0 for v in peaks.values())
    dm = build_config(overrides={"data": {"dataset": "mnist", "data_root": str(fixture_root)},
                                 "objective": {"kind": "distribution"},
                                 "init": {"mode": "random"}, "model": {"name": "convnet"}})
    with pytest.raises(ConfigError, match="unrolls nothing"):
        dry_run(dm)
