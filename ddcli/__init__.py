"""ddcli: dataset distillation (Wang, Zhu, Torralba, Efros 2018) as a library and CLI.

Example:
    >>> from ddcli import DistillConfig, distill, Bundle
    >>> cfg = DistillConfig.from_dict({"data": {"dataset": "mnist"}, "optim": {"iterations": 300}})
    >>> result = distill(cfg, out="m.safetensors")  # doctest: +SKIP
    >>> Bundle.load("m.safetensors").images.shape  # doctest: +SKIP
    torch.Size([10, 10, 1, 28, 28])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ddcli._version import __version__

if TYPE_CHECKING:
    from ddcli.bundle import Bundle
    from ddcli.engine.events import Callbacks, SnapshotInfo
    from ddcli.config import DistillConfig
    from ddcli.engine.loop import DistillResult, EvalInfo, IterationInfo, StartInfo, distill, resume
    from ddcli.errors import DDError

# Imported on first use (PEP 562), not here: `import ddcli` then costs no torch, so
# `dd --version` and `dd --help`, which import the package, start in a fraction of a second.
_LAZY = {
    "Bundle": "ddcli.bundle",
    "DDError": "ddcli.errors",
    "DistillConfig": "ddcli.config",
    "Callbacks": "ddcli.engine.events",
    "SnapshotInfo": "ddcli.engine.events",
    **{name: "ddcli.engine.loop" for name in
       ("DistillResult", "EvalInfo", "IterationInfo", "StartInfo", "distill", "resume")},
}

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ddcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once found, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
