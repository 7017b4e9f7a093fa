"""bench/reference_speed.py's own logic, without the reference code or real data."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
ref = pytest.importorskip("reference_speed")

# A line in the reference's logging format (its Trainer's per-iteration message).
LINE = ("2026-12-07 00:40:54 [INFO ]  Epoch:    0 [   1024/  60000 ( 2%)]\tLoss: 2.2750\t"
        "Data Time: 0.16s\tTrain Time: 0.70s")


def test_an_iteration_line_is_parsed_and_other_lines_are_not():
    assert ref.parse_iteration(LINE) == {"epoch": 0, "seen": 1024, "size": 60000,
                                         "loss": 2.275, "data_s": 0.16, "train_s": 0.70}
    assert ref.parse_iteration("2026-12-07 00:40:53 [INFO ]  Begin of epoch 0 :") is None
    assert ref.parse_iteration("Epoch: 3 (12%)\tTrain Loss: 0.1234") is None  # main.py's train


def _marks(times, busy=(), short=(), cpu_per_s=0.5):
    return [{"t": t, "cpu": cpu_per_s * t, "busy": i in busy, "short": i in short,
             "data_s": 0.01 * i} for i, t in enumerate(times)]


def test_the_window_skips_warmup_overlapped_and_short_iterations():
    # Iteration i took times[i] - times[i - 1]: 5, 1, 1, 1, 0.5, 1, 0.75.
    times = [0.0, 5.0, 6.0, 7.0, 8.0, 8.5, 9.5, 10.25]
    # A child ran at marks 0-2 (iterations 1-3 overlapped it); iteration 5's batch was short.
    marks = _marks(times, busy={0, 1, 2}, short={5})
    assert ref.window(marks[:7], warmup=1, iterations=3) is None  # only 4 and 6 are clean
    w = ref.window(marks, warmup=1, iterations=3)
    assert (w["first"], w["last"]) == (4, 7)
    assert w["s_per_iter"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert w["cpu_s_per_iter"] == pytest.approx(0.5 * (1 + 1 + 0.75) / 3)
    assert w["data_s_per_iter"] == pytest.approx(0.01 * (4 + 6 + 7) / 3)
    # Warm-up alone: iterations 0 and 1 untimed, then 2 and 3.
    assert ref.window(_marks(times), warmup=2, iterations=2)["s_per_iter"] == pytest.approx(1.0)
    # Iteration 0 has no start mark, so warmup 0 times from iteration 1 on.
    assert ref.window(_marks(times), warmup=0, iterations=8) is None
    w = ref.window(_marks(times), warmup=0, iterations=7)
    assert w["first"] == 1 and w["s_per_iter"] == pytest.approx(10.25 / 7)


def _fake_checkout(root: Path) -> Path:
    (root / "datasets").mkdir(parents=True)
    (root / "main.py").write_text("print('main')\n")
    (root / "train_distilled_image.py").write_text(
        "def train(self):\n    self.optimizer.zero_grad()\n")
    (root / "datasets" / "__init__.py").write_text(
        "from torchvision import datasets, transforms\nX = 1\n")
    return root


def test_fixes_go_to_the_copy_only_and_per_dataset(tmp_path):
    src = _fake_checkout(tmp_path / "src")
    before = {p: p.read_text() for p in src.rglob("*.py")}
    mnist = ref.prepare_reference(src, tmp_path / "mnist", "mnist")
    cifar = ref.prepare_reference(src, tmp_path / "cifar", "cifar10")
    assert {p: p.read_text() for p in src.rglob("*.py")} == before
    assert len(mnist) == 1 and len(cifar) == 2
    fixed = (tmp_path / "mnist/train_distilled_image.py").read_text()
    assert "zero_grad(set_to_none=False)" in fixed
    assert "_check_integrity" not in (tmp_path / "mnist/datasets/__init__.py").read_text()
    patched = (tmp_path / "cifar/datasets/__init__.py").read_text()
    assert "CIFAR10._check_integrity = lambda self: True" in patched and "X = 1" in patched


def test_another_version_of_the_reference_is_refused_in_one_line(tmp_path):
    src = _fake_checkout(tmp_path / "src")
    (src / "train_distilled_image.py").write_text("pass\n")
    with pytest.raises(SystemExit, match="train_distilled_image.py of the reference does not"):
        ref.prepare_reference(src, tmp_path / "copy", "mnist")
    with pytest.raises(SystemExit, match="is not a checkout"):
        ref.prepare_reference(tmp_path, tmp_path / "copy2", "mnist")


def test_cpu_time_and_running_children_are_read_from_proc():
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    start = ref.process_cpu(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert ref.process_cpu(os.getpid()) >= start + 0.03
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert sleeper.pid in ref.running_children(os.getpid())
    finally:
        sleeper.kill()
    deadline = time.monotonic() + 5
    while sleeper.pid in ref.running_children(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sleeper.pid not in ref.running_children(os.getpid())  # a zombie is not running
    sleeper.wait()


def test_the_summary_divides_each_ddcli_variant_by_the_reference():
    runs = [{"side": "reference", "s_per_iter": 0.4, "peak_rss": 2 << 30},
            {"side": "ddcli", "s_per_iter": 0.2, "peak_rss": 1 << 30},
            {"side": "ddcli bf16", "s_per_iter": 0.1, "peak_rss": 4 << 30},
            {"side": "reference", "s_per_iter": 0.5, "peak_rss": 3 << 30},
            {"side": "ddcli", "s_per_iter": 0.3, "peak_rss": 1 << 30},
            {"side": "ddcli bf16", "s_per_iter": 0.2, "peak_rss": 1 << 30}]
    rows = ref.summary(runs)
    assert rows[0] == ["ddcli, min", "0.400", "0.200", "0.50x"]
    assert rows[1] == ["ddcli, median", "0.450", "0.250", "0.56x"]
    assert rows[2] == ["ddcli bf16, min", "0.400", "0.100", "0.25x"]
    assert rows[3] == ["ddcli bf16, median", "0.450", "0.150", "0.33x"]
    assert rows[4][0] == "ddcli, peak RSS (max)" and rows[4][3] == "0.33x"
    assert rows[5][0] == "ddcli bf16, peak RSS (max)" and rows[5][3] == "1.33x"


def test_also_settings_make_a_second_ddcli_config():
    config = {"run": {"precision": "fp32", "compile": False}, "data": {"batch_size": 1024}}
    out = ref.with_settings(config, ["run.precision=bf16-outer", "run.compile=true"])
    assert out["run"] == {"precision": "bf16-outer", "compile": True}
    assert config["run"]["precision"] == "fp32"  # a copy
    with pytest.raises(SystemExit, match="expected SECTION.KEY=VALUE"):
        ref.with_settings(config, ["precision=bf16-outer"])


def test_a_missing_checkout_is_one_error_line():
    proc = subprocess.run([sys.executable, str(BENCH / "reference_speed.py"),
                           "--reference", "/nonexistent/dd"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --reference /nonexistent/dd is not a folder"
