"""Several processes: nets split across ranks equal one process over the same nets."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddcli import Bundle, DistillConfig, distill, resume
from ddcli.infra.distributed import Dist, check_config, torchrun_command
from ddcli.cli import app
from ddcli.data import load_dataset
from ddcli.errors import ConfigError, DivergedError

ARGS = ["--init-mode", "random", "--n-nets", "5", "--sample-n-nets", "3", "--model", "mlp",
        "--steps", "2", "--epochs", "2", "--batch-size", "64", "--checkpoint-every", "2",
        "--log-every", "1", "--quiet", "--device", "cpu"]


def _cfg(iterations: int) -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "mnist", "batch_size": 64},
        "model": {"name": "mlp"},
        "synth": {"steps": 2, "epochs": 2},
        "optim": {"iterations": iterations},
        "init": {"mode": "random", "n_nets": 5, "sample_n_nets": 3},
        "run": {"checkpoint_every": 2, "log_every": 1, "device": "cpu"},
    })


def _run(spawn, tmp_path, cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDCLI_OFFLINE": "1"}
    run = spawn(cmd, cwd=tmp_path, env=env)
    assert run.wait() == 0, run.stderr()[-3000:]
    return run


def _close(a: Bundle, b: Bundle) -> None:
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.raw_lrs, b.raw_lrs, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_and_resume(spawn, tmp_path, fixture_root):
    data = load_dataset("mnist", root=fixture_root, download=False)
    one = distill(_cfg(4), out=tmp_path / "one.safetensors", data=data)

    # Fresh run through `--nproc 2` (the launcher runs torchrun): 3 nets split 2 + 1.
    proc = _run(spawn, tmp_path, [sys.executable, "-m", "ddcli", "distill", "mnist",
                                  "--data-root", str(fixture_root), *ARGS, "--nproc", "2",
                                  "--iterations", "4", "-o", "two.safetensors", "--json"])
    record = json.loads(proc.stdout().strip().splitlines()[-1])  # rank 0 alone prints
    assert record["iterations"] == 4 and len(proc.stdout().strip().splitlines()) == 1
    two = Bundle.load(tmp_path / "two.safetensors")
    _close(one.bundle, two)
    assert two.summary["processes"] == 2 and two.config["run"]["nproc"] == 2
    lines = (tmp_path / "two.run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3, 4]  # written once
    ref_losses = [json.loads(x)["loss"] for x in (tmp_path / "one.run" / "metrics.jsonl")
                  .read_text().splitlines()]
    assert [json.loads(x)["loss"] for x in lines] == pytest.approx(ref_losses, rel=1e-5)

    # Resume it to 6 iterations (config.json says nproc 2, so `dd distill --resume`
    # relaunches 2 processes), against 1 process resumed to 6.
    six = resume(tmp_path / "one.run", overrides={"optim": {"iterations": 6}}, data=data,
                 force=True)
    _run(spawn, tmp_path, [sys.executable, "-m", "ddcli", "distill", "--resume", "two.run",
                           "--iterations", "6", "--force", "--data-root", str(fixture_root),
                           "--quiet"])
    _close(six.bundle, Bundle.load(tmp_path / "two.safetensors"))
    assert not torch.allclose(two.images, Bundle.load(tmp_path / "two.safetensors").images)


@pytest.mark.slow
def test_a_failing_launch_is_one_line(spawn, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDCLI_OFFLINE": "1"}
    # every rank fails the same way: the error shows once, without torchrun's report
    bad = spawn([sys.executable, "-m", "ddcli", "distill", "mnist", "--data-root",
                 str(tmp_path / "nowhere"), *ARGS, "--nproc", "2", "-o", "x.safetensors"],
                env=env)
    assert bad.wait() == 1, bad.stderr()[-3000:]
    lines = bad.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not found" in lines[0], lines
    bad.assert_none_left()


@pytest.mark.slow
def test_ctrl_c_with_nproc_stops_every_rank_after_one_checkpoint(spawn, tmp_path, fixture_root):
    """Ctrl-C: the workers stop together, rank 0 checkpoints, exit 130, one line.

    Started as a script's `cmd &` starts it, with SIGINT ignored (the CLI re-arms it).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDCLI_OFFLINE": "1"}
    run_dir = tmp_path / "int.run"
    run = spawn([sys.executable, "-m", "ddcli", "distill", "mnist", "--data-root",
                 str(fixture_root), *ARGS, "--nproc", "2", "--iterations", "100000",
                 "-o", "int.safetensors"], env=env, ignore=(signal.SIGINT,))
    run.wait_for((run_dir / "checkpoint.pt").exists, "first checkpoint")
    run.signal(signal.SIGINT)
    assert run.wait() == 130, run.stderr()[-3000:]
    run.assert_none_left()
    lines = [ln for ln in run.stderr().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), lines  # no warning
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["iteration"] == last["iteration"] >= 2  # saved where it stopped


def test_torchrun_wrapper_reports_another_rank_and_interrupts(monkeypatch, tmp_path, capsys):
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ddcli.infra import torchrun as _torchrun

    argv = ["--standalone", "--nproc-per-node=3", "-m", "ddcli", "distill"]
    seen = {}

    def rank1_fails(args):  # rank 1 fails alone; torchrun then stops 0 and 2 with SIGTERM
        seen["redirects"] = args.redirects
        log = Path(args.log_dir) / "job" / "attempt_0" / "1" / "stderr.log"
        log.parent.mkdir(parents=True)
        log.write_text("progress\nerror: rank one broke\n")
        raise ChildFailedError("ddcli", {
            0: ProcessFailure(local_rank=0, pid=10, exitcode=-15, error_file=""),
            1: ProcessFailure(local_rank=1, pid=11, exitcode=3, error_file=""),
        })

    monkeypatch.setattr(torchrun, "run", rank1_fails)
    assert _torchrun.main(argv) == 3
    assert capsys.readouterr().err.strip() == "rank 1: error: rank one broke"
    assert seen["redirects"] == "1:3,2:3"  # rank 0 keeps the terminal

    def rank0_fails_too(args):  # rank 0 printed its own error: nothing is added
        raise ChildFailedError("ddcli", {
            1: ProcessFailure(local_rank=1, pid=11, exitcode=1, error_file=""),
            0: ProcessFailure(local_rank=0, pid=10, exitcode=2, error_file=""),
        })

    monkeypatch.setattr(torchrun, "run", rank0_fails_too)
    assert _torchrun.main(argv) == 2
    assert capsys.readouterr().err == ""

    def interrupted(args):
        raise SignalException("SIGINT", sigval=signal.SIGINT)

    monkeypatch.setattr(torchrun, "run", interrupted)
    assert _torchrun.main(argv) == 130

    def terminated(args):  # `kill PID`, `timeout`, a batch scheduler: 128 + 15
        raise SignalException("SIGTERM", sigval=signal.SIGTERM)

    monkeypatch.setattr(torchrun, "run", terminated)
    assert _torchrun.main(argv) == 143
    monkeypatch.setattr(torchrun, "run", lambda args: None)
    assert _torchrun.main(argv) == 0
    assert "DDCLI_ERROR_DIR" not in os.environ and "DDCLI_PARENT_PID" not in os.environ


def test_error_lines_are_left_for_the_launcher(monkeypatch, tmp_path):
    monkeypatch.setenv("DDCLI_ERROR_DIR", str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "1")
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "missing.safetensors")])
    assert r.exit_code == 1
    assert (tmp_path / "rank1.err").read_text() == r.stderr


def test_share_is_contiguous_and_covers_every_net():
    items = list(range(7))
    shares = [Dist(rank=r, world=3).share(items) for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    assert Dist().share(items) == items


def test_check_config_refuses_what_cannot_be_split():
    fixed = DistillConfig.from_dict({"run": {"nproc": 2}})
    with pytest.raises(ConfigError, match="one network"):
        check_config(fixed, 2)
    few = _cfg(1)
    few.init.sample_n_nets = 1
    with pytest.raises(ConfigError, match="at least one"):
        check_config(few, 2)
    with pytest.raises(ConfigError, match="--nproc 2"):
        check_config(DistillConfig.from_dict({"run": {"nproc": 2}}), 1)
    check_config(_cfg(1), 2)


def test_nproc_usage_errors_before_launching(tmp_path):
    r = CliRunner().invoke(app, ["distill", "--nproc", "2", "--data-root", str(tmp_path),
                                 "-o", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2, r.output
    assert "one network" in r.stderr and "Traceback" not in r.output


def test_torchrun_command_runs_ddcli_as_a_module():
    cmd = torchrun_command(3, ["distill", "mnist"])
    assert cmd[:3] == [sys.executable, "-m", "ddcli.infra.torchrun"]
    assert "--nproc-per-node=3" in cmd and cmd[-4:] == ["-m", "ddcli", "distill", "mnist"]


# --- devices and host syncs -------------------------------------------------------------

def test_resolve_device_names():
    from ddcli.infra.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    for bad in ("tpu", "meta", "cuda:x"):
        with pytest.raises(ConfigError, match="--device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def _toy_cfg(**run) -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 2, "step_lr": 0.05},
        "optim": {"iterations": 6, "meta_lr": 0.05, "decay_every": 1.0},
        "run": {"device": "cpu", "checkpoint_every": 3, "log_every": 1, **run},
    })


def test_deferred_host_reads_change_nothing_and_still_stop_nans(tmp_path, monkeypatch):
    """What CUDA does (read values every k iterations), exercised on the CPU."""
    from ddcli.infra import device as _device

    from tests._toy import toy_data

    data = toy_data()
    every = distill(_toy_cfg(), out=tmp_path / "a.safetensors", data=data)
    monkeypatch.setattr(_device, "sync_interval", lambda device, log_every: 4)

    seen = []

    class Spy:
        def on_iteration(self, info):
            seen.append((info.iteration, info.loss))

    deferred = distill(_toy_cfg(log_every=0), out=tmp_path / "b.safetensors", data=data,
                       callbacks=Spy())
    assert torch.equal(every.bundle.images, deferred.bundle.images)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "a.run" / "metrics.jsonl")
              .read_text().splitlines()]
    assert seen == list(zip(range(1, 7), losses))  # every iteration reported, in order

    # Resumed at 6, a NaN at iteration 7 is read at the next sync point, iteration 8;
    # it is reported with its own iteration, and no checkpoint (next due at 9) holds it.
    distill(_toy_cfg(log_every=0), out=tmp_path / "c.safetensors", data=data)
    ckpt = tmp_path / "c.run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    poisoned = toy_data()
    poisoned.train_x[:] = float("nan")
    with pytest.raises(DivergedError, match="nan at iteration 7"):
        resume(tmp_path / "c.run", overrides={"optim": {"iterations": 12}}, data=poisoned,
               force=True)
    assert ckpt.read_bytes() == before


def test_nproc_forwards_the_same_command_line(monkeypatch, tmp_path):
    from ddcli.infra import distributed as _distributed

    launched = {}
    monkeypatch.setattr(_distributed, "launch",
                        lambda n, args: launched.update(n=n, args=args) or 0)
    r = CliRunner().invoke(app, ["distill", "folder:x y", "--init-mode", "random", "--n-nets", "4",
                                 "--sample-n-nets", "4", "--no-batch-nets", "--nproc", "2",
                                 "--quiet", "-o", str(tmp_path / "o.safetensors"), "--ipc", "2"])
    assert r.exit_code == 0, r.output
    assert launched["n"] == 2
    args = launched["args"]
    assert args[:2] == ["distill", "folder:x y"] and "--nproc" not in args
    pairs = dict(zip(args[2::1], args[3::1]))
    assert pairs["--init-mode"] == "random" and pairs["--sample-n-nets"] == "4"
    assert pairs["--images-per-class-per-step"] == "2" and pairs["--out"] == str(tmp_path / "o.safetensors")
    assert "--no-batch-nets" in args and "--quiet" in args and "--force" not in args
