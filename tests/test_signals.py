"""SIGINT, SIGTERM and SIGHUP stop a run like Ctrl-C, and no process of it is left behind.

The end-to-end tests run `dd distill` as real processes (one, and `--nproc 2`), started
as a script's `cmd &` starts them (SIGINT ignored) and signalled as `kill PID` does.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddcli import DistillConfig, distill
from ddcli.errors import Interrupted
from ddcli.infra import signals
from tests._procs import python_module
from tests._toy import toy_data

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; the parent-death signal is Linux's")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DDCLI_OFFLINE": "1"}
RUN = ["--init-mode", "random", "--n-nets", "5", "--sample-n-nets", "3", "--model", "mlp",
       "--steps", "2", "--epochs", "2", "--batch-size", "64", "--checkpoint-every", "2",
       "--log-every", "1", "--quiet", "--device", "cpu", "--iterations", "100000"]


def distill_command(fixture_root: Path, *extra: str) -> list[str]:
    return python_module("ddcli", "distill", "mnist", "--data-root", str(fixture_root), *RUN,
                         "-o", "int.safetensors", *extra)


def signal_after_a_checkpoint(spawn, tmp_path, fixture_root, signum, *extra) -> int:
    """Start a run with SIGINT ignored (as `cmd &` in a script does), send ``signum`` to
    the started process once a checkpoint exists; return its exit status."""
    run = spawn(distill_command(fixture_root, *extra), env=ENV, ignore=(signal.SIGINT,))
    run.wait_for((tmp_path / "int.run" / "checkpoint.pt").exists, "first checkpoint")
    run.signal(signum)
    code = run.wait()
    run.assert_none_left()
    lines = [ln for ln in run.stderr().splitlines() if ln.strip()]
    # One line (no torchrun warnings, no traceback), saying how to continue.
    assert len(lines) == 1 and lines[0].startswith("error: interrupted at iteration"), lines
    assert "--resume int.run" in lines[0]
    return code


def assert_checkpoint_is_where_it_stopped(run_dir: Path) -> None:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert state["iteration"] == last["iteration"] >= 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_stops_one_process_after_its_iteration(spawn, tmp_path, fixture_root, signum):
    assert signal_after_a_checkpoint(spawn, tmp_path, fixture_root, signum) == 128 + signum
    assert_checkpoint_is_where_it_stopped(tmp_path / "int.run")
    assert not (tmp_path / "int.safetensors").exists()


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank(spawn, tmp_path, fixture_root):
    """The issue's case: `kill PID` of `dd distill --nproc 2` used to orphan the workers."""
    code = signal_after_a_checkpoint(spawn, tmp_path, fixture_root, signal.SIGTERM,
                                     "--nproc", "2")
    assert code == 143
    assert_checkpoint_is_where_it_stopped(tmp_path / "int.run")


@pytest.mark.slow
def test_killing_the_launcher_outright_leaves_no_worker(spawn, tmp_path, fixture_root):
    """SIGKILL can't be passed on: torchrun's parent-death signal stops it and its workers.

    (It doesn't wait for training: the workers' own parent-death signal is the same call,
    tested below with a plain parent.)
    """
    run = spawn(distill_command(fixture_root, "--nproc", "2"), env=ENV)
    run.wait_for(lambda: len(run.pids()) >= 4, "launcher, torchrun and two workers")
    run.signal(signal.SIGKILL)
    assert run.wait() == 137
    run.assert_none_left()


# --- in this process: a second signal, SIGHUP, inherited dispositions -------------------

@pytest.fixture
def guarded():
    """SIGTERM and SIGHUP that escape the code under test fail the test, not kill pytest."""
    def escaped(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} was not handled")

    previous = {s: signal.signal(s, escaped) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _toy_cfg() -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 1},
        "optim": {"iterations": 50},
        "run": {"device": "cpu", "checkpoint_every": 2, "log_every": 1},
    })


class _SendAt:
    def __init__(self, iteration: int, *signums: int) -> None:
        self.iteration, self.signums = iteration, signums

    def on_iteration(self, info):
        if info.iteration == self.iteration:
            for s in self.signums:
                os.kill(os.getpid(), s)


def test_sighup_stops_like_ctrl_c_with_its_own_exit_code(tmp_path, guarded):
    with pytest.raises(Interrupted, match="--resume") as exc:
        distill(_toy_cfg(), out=tmp_path / "a.safetensors", data=toy_data(),
                callbacks=_SendAt(3, signal.SIGHUP))
    assert exc.value.exit_code == 129
    assert torch.load(tmp_path / "a.run" / "checkpoint.pt")["iteration"] == 3


@pytest.mark.parametrize("signum,raised", [(signal.SIGTERM, SystemExit),
                                           (signal.SIGINT, KeyboardInterrupt)],
                         ids=["TERM", "INT"])
def test_a_second_signal_stops_at_once_and_keeps_the_checkpoint(tmp_path, guarded, capfd,
                                                                 signum, raised):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(raised) as exc:
        distill(_toy_cfg(), out=tmp_path / "a.safetensors", data=toy_data(),
                callbacks=_SendAt(3, signum, signum))
    if raised is SystemExit:
        assert exc.value.code == 143
        assert "stopped at once by a second SIGTERM" in capfd.readouterr().err
    run_dir = tmp_path / "a.run"
    # Iteration 3 was not finished into a checkpoint; the one from 2 is whole.
    assert torch.load(run_dir / "checkpoint.pt")["iteration"] == 2
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_handlers_are_rearmed_whatever_was_inherited_except_nohup():
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals.STOP_SIGNALS}
    try:
        with signals.stop_on_signals():
            assert callable(signal.getsignal(signal.SIGINT))  # `cmd &` in a script
            assert callable(signal.getsignal(signal.SIGTERM))
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # nohup's choice
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # put back
        signals.rearm_interrupt()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_forwarded_signals_reach_the_child(guarded):
    child = [sys.executable, "-c", "import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
             "print('ready', flush=True)\n"
             "time.sleep(300)"]
    with signals.forward_signals() as fwd:
        proc = fwd.attach(subprocess.Popen(child, stdout=subprocess.PIPE, text=True,
                                           start_new_session=True))
        try:
            assert proc.stdout.readline().strip() == "ready"
            os.kill(os.getpid(), signal.SIGTERM)  # to us: passed on
            assert proc.wait(120) == 7
        finally:
            proc.kill()
            proc.wait()
    assert fwd.signum == signal.SIGTERM and fwd.exit_code == 143


def _standalone_signals_module() -> str:
    """Python code that loads ddcli/infra/signals.py alone (fast: no torch import)."""
    path = Path(signals.__file__)
    return (f"import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('s', {str(path)!r})\n"
            f"s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s)\n")


def test_die_with_parent_follows_a_parent_killed_outright(spawn, tmp_path):
    # parent -> child; the child asks for SIGTERM on its parent's death; kill -9 the parent.
    child = _standalone_signals_module() + (
        "import time\ns.die_with_parent()\nprint('armed', flush=True)\ntime.sleep(300)")
    parent = ("import os, subprocess, sys, time\n"
              f"env = {{**os.environ, 'DDCLI_PARENT_PID': str(os.getpid())}}\n"
              f"subprocess.Popen([sys.executable, '-c', {child!r}], env=env)\n"
              "time.sleep(300)")
    run = spawn([sys.executable, "-c", parent])
    run.wait_for(lambda: "armed" in run.stdout(), "armed child")
    assert len(run.pids()) == 2
    run.signal(signal.SIGKILL)
    run.wait()
    run.assert_none_left()

    # A parent that died before the child could register: the child stops at once.
    late = subprocess.run([sys.executable, "-c", child], timeout=120,
                          env={**os.environ, signals.PARENT_PID_ENV: "1"})
    assert late.returncode == -signal.SIGTERM
