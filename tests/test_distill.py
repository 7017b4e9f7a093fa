"""The distillation loop: learning, checkpoints, exact resume, divergence."""

import json
import os
import signal

import pytest
import torch

from ddcli import Bundle, DistillConfig, distill, resume
from ddcli.errors import CheckpointError, ConfigError, DivergedError, Interrupted

from tests._toy import toy_config, toy_data


def cfg(**sections) -> DistillConfig:
    return toy_config(**sections)


def test_distill_improves_and_writes_bundle(tmp_path):
    data = toy_data()
    result = distill(cfg(optim={"iterations": 30, "decay_every": 100.0}, run={"eval_every": 30}),
                     out=tmp_path / "b.safetensors", data=data)
    b = Bundle.load(tmp_path / "b.safetensors")
    assert b.images.shape == (2, 3, 1, 8, 8) and b.raw_lrs.shape == (4,)
    assert b.labels.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert b.init_params is not None and b.init_mode == "fixed"
    assert b.config["optim"]["iterations"] == 30 and b.summary["iterations"] == 30
    assert b.classes == data.classes and b.dataset == "toy"
    assert result.evals[-1].mean > 0.9  # chance is 1/3
    lines = [json.loads(x) for x in (tmp_path / "b.run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 30 and losses[-1] < losses[0]
    written = json.loads((tmp_path / "b.run" / "config.json").read_text())
    prov = written.pop("provenance")
    assert written == b.config  # the settings, and beside them how the run was made:
    assert prov == b.provenance and prov["earlier"] == []  # a fresh run: no earlier process
    assert prov["data"]["name"] == "toy"
    assert DistillConfig.from_dict({**written, "provenance": prov}).to_dict() == b.config


def test_random_init_runs_and_stores_no_init(tmp_path):
    result = distill(cfg(init={"mode": "random", "n_nets": 3, "sample_n_nets": 2}),
                     out=tmp_path / "r.safetensors", data=toy_data())
    assert result.bundle.init_params is None and result.bundle.init_mode == "random"


def _same(a: Bundle, b: Bundle) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.raw_lrs, b.raw_lrs)


@pytest.mark.parametrize("mode", ["fixed", "random"])
def test_resume_is_bit_exact(tmp_path, mode):
    data = toy_data()
    c = cfg(init={"mode": mode, "n_nets": 2, "sample_n_nets": 2})
    full = distill(c, out=tmp_path / "full.safetensors", data=data)

    # Stop after iteration 4 the way Ctrl-C does, then resume.
    class CtrlC:
        def on_iteration(self, info):
            if info.iteration == 4:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="--resume"):
        distill(c, out=tmp_path / "part.safetensors", data=data, callbacks=CtrlC())
    assert not (tmp_path / "part.safetensors").exists()
    state = torch.load(tmp_path / "part.run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4
    resumed = resume(tmp_path / "part.run", data=data)
    assert resumed.iterations == 8
    _same(full.bundle, resumed.bundle)
    _same(full.bundle, Bundle.load(tmp_path / "part.safetensors"))
    # metrics.jsonl has each iteration once
    its = [json.loads(x)["iteration"] for x in (tmp_path / "part.run" / "metrics.jsonl").read_text().splitlines()]
    assert its == list(range(1, 9))


def test_resume_from_periodic_checkpoint_after_a_crash(tmp_path):
    """A kill -9 leaves the last periodic checkpoint; resuming from it is exact."""
    data = toy_data()
    full = distill(cfg(), out=tmp_path / "full.safetensors", data=data)

    class Crash:
        def on_iteration(self, info):
            if info.iteration == 5:
                raise SystemExit("simulated kill")

    with pytest.raises(SystemExit):
        distill(cfg(), out=tmp_path / "crash.safetensors", data=data, callbacks=Crash())
    state = torch.load(tmp_path / "crash.run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3  # checkpoint_every=3
    _same(full.bundle, resume(tmp_path / "crash.run", data=data).bundle)


def test_existing_run_folder_is_not_overwritten(tmp_path):
    data = toy_data()
    distill(cfg(), out=tmp_path / "a.safetensors", data=data)
    with pytest.raises(ConfigError, match="--resume"):
        distill(cfg(), out=tmp_path / "a.safetensors", data=data)
    distill(cfg(), out=tmp_path / "a.safetensors", data=data, force=True)


def test_resume_refuses_changing_the_method(tmp_path):
    data = toy_data()
    distill(cfg(), out=tmp_path / "a.safetensors", data=data)
    with pytest.raises(ConfigError, match="can't change"):
        resume(tmp_path / "a.run", overrides={"synth": {"steps": 5}}, data=data)
    with pytest.raises(CheckpointError, match="no run folder"):
        resume(tmp_path / "nope.run", data=data)


def test_nan_divergence_raises_and_keeps_checkpoint(tmp_path):
    data = toy_data()
    distill(cfg(optim={"iterations": 3}), out=tmp_path / "a.safetensors", data=data)
    before = (tmp_path / "a.run" / "checkpoint.pt").read_bytes()
    poisoned = toy_data()
    poisoned.train_x[:] = float("nan")
    with pytest.raises(DivergedError, match=r"nan at iteration 4.*--resume .*--meta-lr"):
        resume(tmp_path / "a.run", overrides={"optim": {"iterations": 6}}, data=poisoned, force=True)
    assert (tmp_path / "a.run" / "checkpoint.pt").read_bytes() == before


def test_source_model_weights_untouched(tmp_path, monkeypatch):
    """The engine's model only provides structure; its own weights never change."""
    import ddcli.engine.loop as engine

    seen = {}
    real_loop = engine._Run.loop

    def spy(self):
        seen["before"] = {k: v.clone() for k, v in self.rt.model.state_dict().items()}
        out = real_loop(self)
        seen["after"] = self.rt.model.state_dict()
        return out

    monkeypatch.setattr(engine._Run, "loop", spy)
    distill(cfg(optim={"iterations": 2}), out=tmp_path / "a.safetensors", data=toy_data())
    for k, v in seen["before"].items():
        assert torch.equal(v, seen["after"][k])


def test_resume_writes_the_bundle_where_the_run_put_it(tmp_path, monkeypatch):
    """A relative -o, resumed from another folder, still lands beside the run."""
    data = toy_data()
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    distill(cfg(optim={"iterations": 3}), out="b.safetensors", data=data)
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = resume(tmp_path / "a" / "b.run", overrides={"optim": {"iterations": 6}}, data=data,
                    force=True)
    assert result.bundle_path == tmp_path / "a" / "b.safetensors"
    assert Bundle.load(tmp_path / "a" / "b.safetensors").summary["iterations"] == 6
    assert list((tmp_path / "elsewhere").iterdir()) == []

    # a moved run folder (its recorded place is gone) writes beside itself
    (tmp_path / "a").rename(tmp_path / "moved")
    result = resume(tmp_path / "moved" / "b.run", overrides={"optim": {"iterations": 8}},
                    data=data, force=True)
    assert result.bundle_path == tmp_path / "moved" / "b.safetensors"
    assert Bundle.load(result.bundle_path).summary["iterations"] == 8


def test_cpu_seconds_are_logged_checkpointed_and_carried_over_a_resume(tmp_path):
    data = toy_data()
    c = cfg(optim={"iterations": 6}, run={"checkpoint_every": 3, "log_every": 1})

    class CtrlC:
        def on_iteration(self, info):
            assert info.cpu_s > 0
            if info.iteration == 3:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        distill(c, out=tmp_path / "p.safetensors", data=data, callbacks=CtrlC())
    saved = torch.load(tmp_path / "p.run" / "checkpoint.pt", weights_only=True)
    spent, k = saved["cpu_s"], saved["iteration"]
    assert spent > 0
    result = resume(tmp_path / "p.run", data=data)
    lines = [json.loads(x) for x in (tmp_path / "p.run" / "metrics.jsonl").read_text().splitlines()]
    cpu = [x["cpu_s"] for x in lines]
    assert [x["iteration"] for x in lines] == list(range(1, 7))
    # counted on from the checkpoint (lines are rounded to the millisecond)
    assert all(a <= b + 1e-3 for a, b in zip(cpu, cpu[1:]))
    assert cpu[k] >= spent - 1e-3 and cpu[-1] > spent  # cpu[k]: iteration k + 1, resumed
    summary = result.bundle.summary  # rounded to 10 ms
    assert summary["cpu_s"] >= cpu[-1] - 0.01 and summary["cpu_s"] > 0
