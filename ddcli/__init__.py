"""ddcli: dataset distillation (Wang, Zhu, Torralba, Efros 2018) as a library and CLI.

Example:
    >>> from ddcli import DistillConfig, distill, Bundle
    >>> cfg = DistillConfig.from_dict({"data": {"dataset": "mnist"}, "optim": {"iterations": 300}})
    >>> result = distill(cfg, out="m.safetensors")  # doctest: +SKIP
    >>> Bundle.load("m.safetensors").images.shape  # doctest: +SKIP
    torch.Size([10, 10, 1, 28, 28])
"""

from ddcli.engine.events import Callbacks, SnapshotInfo
from ddcli.engine.loop import DistillResult, EvalInfo, IterationInfo, StartInfo, distill, resume
from ddcli._version import __version__
from ddcli.bundle import Bundle
from ddcli.config import DistillConfig
from ddcli.errors import DDError

__all__ = [
    "Bundle",
    "Callbacks",
    "DDError",
    "DistillConfig",
    "DistillResult",
    "EvalInfo",
    "IterationInfo",
    "SnapshotInfo",
    "StartInfo",
    "__version__",
    "distill",
    "resume",
]
