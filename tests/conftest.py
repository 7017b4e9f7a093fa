import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# No test may try the network, and none may read ../shared.
os.environ["DDCLI_OFFLINE"] = "1"
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def fixture_root() -> Path:
    """Folder holding the committed real-MNIST subset in torchvision's layout."""
    return FIXTURES
