"""Domain errors. The library raises these; the CLI maps each to one line on stderr and
its ``exit_code``: 2 for usage errors (the command asked for something that can't be:
fix the command), 1 for what fails at run time, 130 for an interrupted run."""

from __future__ import annotations


class DDError(Exception):
    """Base class of every error ddcli reports to a user as one line."""

    exit_code = 1


class ConfigError(DDError):
    """A configuration value is invalid or inconsistent (a usage error: exit 2)."""

    exit_code = 2


class UnknownDatasetError(DDError):
    """The dataset name is not in the registry (a usage error: exit 2)."""

    exit_code = 2


class DatasetNotFoundError(DDError):
    """The dataset files are missing and could not be downloaded."""


class UnknownModelError(DDError):
    """The model name is not in the registry (a usage error: exit 2)."""

    exit_code = 2


class ModelError(DDError):
    """A model can't be used as asked (mutable buffers, input shape mismatch)."""


class BundleFormatError(DDError):
    """A file is not a readable ddcli bundle (wrong kind, truncated, newer version)."""


class CheckpointError(DDError):
    """A run folder has no usable checkpoint."""


class DivergedError(DDError):
    """The outer loss became NaN or inf."""


class PoolError(DDError):
    """A pretrained-network pool is missing, empty or does not match."""


class ExportError(DDError):
    """An export could not be written."""


class UnsupportedExportError(ExportError):
    """The export format can't hold this bundle (a usage error: exit 2)."""

    exit_code = 2


class Interrupted(DDError):
    """The run was stopped by a signal after writing a checkpoint: exit 128 + N (130 for
    Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ImageSetError(DDError):
    """An image set (.pt, .npz or ImageFolder) to evaluate is missing or malformed."""


class OutputError(DDError):
    """A result can't be written where it was asked to go (permissions, a full disk)."""


class MissingDependencyError(DDError):
    """An optional package that a feature needs is not installed (exit 1)."""
