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
