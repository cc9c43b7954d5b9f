"""One exception hierarchy; every message names the problem and, where there is one, the fix.

`ERROR_CODES` is the automation contract (README, "Automation: JSON, errors and exit codes"):
the stable `code` a caller reads under `--json` and the exit status of each error class. A class
that is not listed takes its nearest listed base's. Changing a code or a status breaks scripts:
add, never renumber.
"""

from __future__ import annotations

from typing import Any


class LocftError(Exception):
    """Base of every error locft raises on purpose. The CLI prints these as one line (or a JSON
    object under --json) and exits with the status `ERROR_CODES` gives the class."""

    # machine-readable facts about the failure (e.g. an import's per-row report): the JSON
    # error object carries them as "details"
    details: dict[str, Any] | None = None

    def with_details(self, details: dict[str, Any]) -> LocftError:
        self.details = details
        return self

    @property
    def code(self) -> str:
        return error_code(type(self))[0]

    @property
    def exit_code(self) -> int:
        return error_code(type(self))[1]


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


class BusyError(LocftError):
    """Another process holds a lock of this home (a daemon, or a round running elsewhere)."""


class SetupError(LocftError):
    """The embedded model or the offline data is missing and could not be installed."""


# class -> (code, exit status). 0 is success, 1 an error of no more specific class, 2 a usage
# error (click's own: a bad option or argument), 70 an internal error (a bug: EX_SOFTWARE).
ERROR_CODES: dict[type[LocftError], tuple[str, int]] = {
    LocftError: ("error", 1),
    ConfigError: ("config_invalid", 3),
    InvalidFactError: ("fact_invalid", 4),
    InputFormatError: ("input_invalid", 4),
    StoreError: ("store_error", 5),
    NotFoundError: ("not_found", 6),
    ConflictError: ("conflict", 7),
    ModelLoadError: ("model_load_failed", 8),
    LocationError: ("location_invalid", 8),
    SnapshotError: ("snapshot_invalid", 9),
    DaemonError: ("daemon_error", 10),
    BusyError: ("busy", 12),
    SetupError: ("setup_incomplete", 11),
}
USAGE = ("usage", 2)
INTERNAL = ("internal", 70)


def error_code(cls: type[BaseException]) -> tuple[str, int]:
    """The (code, exit status) of an error class: its own entry, else its nearest base's."""
    for klass in cls.__mro__:
        if klass in ERROR_CODES:
            return ERROR_CODES[klass]
    return INTERNAL
