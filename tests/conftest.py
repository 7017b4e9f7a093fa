import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# No test may try the network, and none may read ../shared.
os.environ["DDCLI_OFFLINE"] = "1"
# Tiny tensors gain nothing from a second thread, and OpenMP spin-waiting under
# contention costs up to 10x; one thread keeps the suite fast and predictable.
torch.set_num_threads(1)


@pytest.fixture
def fixture_root() -> Path:
    """Folder holding the committed real-MNIST subset in torchvision's layout."""
    return FIXTURES


@pytest.fixture
def spawn(tmp_path):
    """Start a real subprocess (see ``tests/_procs.py``); all its processes die with the test.

    ``spawn(cmd, cwd=..., env=..., ignore=(signal.SIGINT,))`` returns a ``Spawned``.
    """
    from tests._procs import Spawned

    started: list[Spawned] = []

    def start(cmd, *, cwd=None, env=None, ignore=()):
        run = Spawned(list(map(str, cmd)), cwd=cwd or tmp_path, env=env, ignore=ignore,
                      logs=tmp_path / "logs")
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
