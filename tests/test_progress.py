"""Progress displays: plain lines off a terminal, Rich bars with an ETA on one, the API's."""

import io

import pytest
import torch
from rich.console import Console

from ddcli import DistillConfig, distill
from ddcli.evaluate import build_baseline
from ddcli.pool.pretrain import PretrainRecipe, pretrain
from ddcli.progress import DistillProgress, EvalProgress, ProgressInfo, PretrainProgress, eta

from tests._toy import toy_data


def _console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=160, highlight=False)


def _cfg(iterations: int = 6) -> DistillConfig:
    return DistillConfig.from_dict({
        "data": {"dataset": "toy", "batch_size": 32},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "synth": {"steps": 2, "epochs": 1},
        "optim": {"iterations": iterations},
        "run": {"device": "cpu", "checkpoint_every": 0, "log_every": 1},
    })


def test_distill_plain_lines_label_the_rates_and_give_an_eta(tmp_path):
    console = _console(terminal=False)
    with DistillProgress(console=console, every_s=0) as display:
        assert not display.live
        distill(_cfg(), out=tmp_path / "a.safetensors", data=toy_data(), callbacks=display)
    lines = console.file.getvalue().splitlines()
    assert lines[0].startswith("distilling toy with mlp")
    iters = [ln for ln in lines if ln.startswith("iter ")]
    assert [ln.split()[1] for ln in iters] == [f"{i}/6" for i in range(1, 7)]
    assert all("lr min/mean/max " in ln for ln in iters)
    assert "eta " in iters[2] and "eta" not in iters[-1]  # nothing left at the end


def test_plain_lines_come_every_so_often_not_every_iteration(tmp_path):
    console = _console(terminal=False)
    with DistillProgress(console=console, every_s=3600) as display:
        distill(_cfg(), out=tmp_path / "a.safetensors", data=toy_data(), callbacks=display)
    iters = [ln for ln in console.file.getvalue().splitlines() if ln.startswith("iter ")]
    assert [ln.split()[1] for ln in iters] == ["1/6", "6/6"]  # the first, then the last


def test_distill_on_a_terminal_draws_a_bar_with_an_eta(tmp_path):
    console = _console(terminal=True)
    with DistillProgress(console=console) as display:
        assert display.live
        distill(_cfg(), out=tmp_path / "a.safetensors", data=toy_data(), callbacks=display)
    assert display.progress is None  # stopped on leaving: the terminal is given back
    out = console.file.getvalue()
    assert "distill" in out and "6/6" in out and "eta" in out and "lr min/mean/max" in out


def test_quiet_draws_nothing(tmp_path):
    console = _console(terminal=True)
    with DistillProgress(quiet=True, console=console) as display:
        distill(_cfg(), out=tmp_path / "a.safetensors", data=toy_data(), callbacks=display)
        display.on_progress(ProgressInfo("kmeans", 1, 2))
    assert console.file.getvalue() == ""


def test_the_python_api_shows_the_cli_display_on_request(tmp_path, capsys):
    distill(_cfg(), out=tmp_path / "a.safetensors", data=toy_data(), progress=True)
    err = capsys.readouterr().err  # not a terminal here: the plain lines
    assert "distilling toy with mlp" in err and "iter 6/6" in err
    distill(_cfg(), out=tmp_path / "b.safetensors", data=toy_data())
    assert capsys.readouterr().err == ""  # silent unless asked
    from ddcli import resume

    resume(tmp_path / "a.run", overrides={"optim": {"iterations": 8}}, data=toy_data(), force=True,
           progress=True)
    assert "resuming toy" in capsys.readouterr().err


def test_pretrain_progress_counts_every_net_step(tmp_path):
    console = _console(terminal=False)
    seen = []
    display = PretrainProgress(console=console, every_s=0)
    original = display.on_step
    display.on_step = lambda info: (seen.append(info), original(info))
    with display:
        pretrain(toy_data(), out=tmp_path / "pool", n_nets=3, model="mlp",
                 model_kwargs={"hidden": [8]}, nets_per_batch=2, callbacks=display,
                 recipe=PretrainRecipe(real_epochs=1, batch_size=32))
    lines = console.file.getvalue().splitlines()
    assert lines[0].startswith("pretraining 3 mlp nets")
    steps = [ln.split()[1] for ln in lines if ln.startswith("step ")]
    per_net = seen[0].total
    assert steps[-1] == f"{3 * per_net}/{3 * per_net}"  # groups of 2 and 1: all net-steps
    assert sum(ln.startswith("net ") for ln in lines) == 3


def test_pretrain_progress_on_request(tmp_path, capsys):
    pretrain(toy_data(), out=tmp_path / "pool", n_nets=1, model="mlp",
             model_kwargs={"hidden": [8]}, progress=True,
             recipe=PretrainRecipe(real_epochs=1, batch_size=32))
    assert "pretraining 1 mlp net (" in capsys.readouterr().err


def test_eval_display_draws_stages_and_progress_events():
    console = _console(terminal=False)
    stage = type("Stage", (), {"index": 1, "total": 2, "label": "kmeans · fresh random inits"})
    with EvalProgress(console=console, every_s=3600) as display:
        display.on_stage(stage)
        for done in range(1, 11):
            display.on_progress(ProgressInfo("kmeans", done, 10, f"class {done - 1}"))
        display.on_progress(ProgressInfo("net 1/20", 5, 300))
    # the stage, then one progress line: the next is due ~15 s (here an hour) later
    assert console.file.getvalue().splitlines() == [
        "[1/2] kmeans · fresh random inits", "kmeans: 1/10 · class 0"]
    live = _console(terminal=True)
    with EvalProgress(console=live) as display:
        display.on_progress(ProgressInfo("kmeans", 3, 10, "class 2"))
        bars = list(display.progress.tasks)
        assert [t.description for t in bars] == ["kmeans"] and bars[0].completed == 3
        display.on_progress(ProgressInfo("net 1/20", 1, 300))  # replaces the finished bar
        assert [t.description for t in display.progress.tasks] == ["net 1/20"]
        display.on_stage(stage)
        assert list(display.progress.tasks) == []
    assert "kmeans" in live.file.getvalue() and "eta" in live.file.getvalue()


def test_eta_is_the_remaining_share_of_the_time_so_far():
    assert eta(1, 4, 10.0) == "eta 0:30"
    assert eta(30, 40, 3600.0) == "eta 20:00"
    assert eta(1, 1000, 10.0) == "eta 2:46:30"
    assert eta(0, 4, 10.0) == "" and eta(4, 4, 10.0) == ""


def test_kmeans_baseline_reports_each_class():
    events = []
    labels = torch.arange(3).repeat_interleave(2).expand(2, 6)  # 2 steps x (3 classes x 2)
    build_baseline("kmeans", labels, toy_data(), seed=0, on_progress=events.append)
    assert [(e.label, e.done, e.total) for e in events] == [("kmeans", i, 3) for i in (1, 2, 3)]
    assert events[-1].detail == "class class2"


@pytest.mark.parametrize("name", ["random-real", "class-mean"])
def test_other_baselines_do_not_report(name):
    events = []
    labels = torch.arange(3).repeat_interleave(2).expand(2, 6)
    build_baseline(name, labels, toy_data(), seed=0, on_progress=events.append)
    assert events == []
