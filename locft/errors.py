"""One exception hierarchy; every message names the problem and, where there is one, the fix."""

from __future__ import annotations


class LocftError(Exception):
    """Base of every error locft raises on purpose. The CLI prints these as one line, exit 1."""

    exit_code: int = 1


class ConfigError(LocftError):
    """A configuration value or file is invalid."""


class InvalidFactError(LocftError):
    """A fact (prompt, answer, probe) failed validation."""


class InputFormatError(LocftError):
    """A file could not be read as the expected format; names the line."""


class ModelLoadError(LocftError):
    """A model directory or GGUF file could not be loaded."""


class LocationError(LocftError):
    """An edit location template matched no parameter (or an ambiguous set)."""


class SnapshotError(LocftError):
    """A snapshot is missing, corrupted, or belongs to another base model."""


class StoreError(LocftError):
    """The knowledge store refused an operation."""


class NotFoundError(StoreError):
    """An unknown fact or version id."""


class ConflictError(StoreError):
    """A fact conflicts with an active fact (same normalized prompt, other answer)."""


class DaemonError(LocftError):
    """The daemon could not start, stop or be reached."""
