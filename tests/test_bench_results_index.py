"""bench/check_results.py's choice of code: this checkout, or a worktree of a row's commit."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
check_results = pytest.importorskip("check_results")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_row_with_a_commit_is_evaluated_with_that_commits_code(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    for version in ("old", "new"):
        (repo / "code.py").write_text(f"VERSION = {version!r}\n")
        _git(repo, "add", "code.py")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", version)
    old = _git(repo, "rev-parse", "HEAD~1")
    with ExitStack() as stack:
        trees = check_results.Trees(stack, root=repo)
        assert trees(None) == repo
        tree = trees(old)
        assert tree != repo and (tree / "code.py").read_text() == "VERSION = 'old'\n"
        assert trees(old) == tree  # one worktree per commit
        assert (repo / "code.py").read_text() == "VERSION = 'new'\n"
    assert not tree.exists()  # removed, and unregistered from the repository
    assert str(tree) not in _git(repo, "worktree", "list")
    with ExitStack() as stack, pytest.raises(SystemExit, match="is not in this clone"):
        check_results.Trees(stack, root=repo)("0" * 40)


index_row = pytest.importorskip("index_row")


def test_an_index_row_keeps_the_evaluation_and_the_departures_from_the_preset():
    args = ["--protocol", "dsa", "--data-root", "/data", "--n-nets", "5", "--json",
            "--data-root=/x", "--quiet", "--compile"]
    assert index_row.eval_args(args) == ["--protocol", "dsa", "--n-nets", "5", "--compile"]
    made = {"data": {"dataset": "fashion-mnist", "data_root": "/here"},
            "optim": {"iterations": 3495, "meta_lr": 1.0}, "run": {"device": "cpu"},
            "version": 3}
    preset = {"data": {"dataset": "mnist", "data_root": None},
              "optim": {"iterations": 20000, "meta_lr": 1.0}, "run": {"device": "auto"}}
    assert index_row.departures(made, preset) == {"data": {"dataset": "fashion-mnist"},
                                                  "optim": {"iterations": 3495}}
    row = {"label": "distilled · fresh nets", "mean": 0.832249, "std": 0.00171, "n": 5}
    want = {"distilled · fresh nets": {"mean": 0.8322, "std": 0.0017, "n": 5}}
    assert index_row.report_rows({"rows": [row]}) == want
    assert index_row.report_rows({"evaluations": [{"rows": []}, {"rows": [row]}]}) == want
