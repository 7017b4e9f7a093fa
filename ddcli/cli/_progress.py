"""The CLI's progress displays: those of the library (``ddcli.progress``), on stderr."""

from ddcli.progress import DistillProgress, EvalProgress, PretrainProgress, stderr

__all__ = ["DistillProgress", "EvalProgress", "PretrainProgress", "stderr"]
