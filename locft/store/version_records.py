"""Versions as the store hands them out: version rows with their derived state, gate results, diffs.

A version's state is derived, never stored:
  promoted  the pointer is on it
  retired   it was promoted once and the pointer has moved on
  rejected  its newest gate result failed (and it was never promoted)
  candidate anything else: not gated yet, or gated and passed but not promoted
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from locft.store.db import aware
from locft.store.fact_records import FactRevisionInfo
from locft.store.models import GateResult

VersionState = Literal["candidate", "promoted", "rejected", "retired"]


@dataclass(frozen=True)
class GateResultInfo:
    id: int
    version_id: int
    passed: bool
    metrics: dict[str, Any]
    report: dict[str, Any]
    round_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: GateResult) -> GateResultInfo:
        return cls(row.id or 0, row.version_id, row.passed, dict(row.metrics or {}), dict(row.report or {}),
                   row.round_id, aware(row.created_at) or row.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "version_id": self.version_id, "passed": self.passed, "metrics": self.metrics,
            "report": self.report, "round_id": self.round_id, "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class VersionInfo:
    """A version with its derived state and newest gate result."""

    id: int
    parent_id: int | None
    state: VersionState
    base_fingerprint: str | None
    edit_config: dict[str, Any]
    fact_count: int
    fact_set_digest: str
    snapshot_path: str | None  # relative to $LOCFT_HOME
    snapshot_sha256: str | None
    snapshot_size: int | None
    snapshot_present: bool  # False once retention deleted it (version 0 has none: True)
    round_id: int | None
    note: str | None
    created_at: datetime
    gate: GateResultInfo | None

    @property
    def is_base(self) -> bool:
        return self.id == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "parent_id": self.parent_id, "state": self.state,
            "base_fingerprint": self.base_fingerprint, "edit_config": self.edit_config,
            "fact_count": self.fact_count, "fact_set_digest": self.fact_set_digest,
            "snapshot_path": self.snapshot_path, "snapshot_sha256": self.snapshot_sha256,
            "snapshot_size": self.snapshot_size, "snapshot_present": self.snapshot_present,
            "round_id": self.round_id, "note": self.note, "created_at": self.created_at.isoformat(),
            "gate": self.gate.to_dict() if self.gate else None,
        }


@dataclass(frozen=True)
class FactChange:
    fact_id: int
    before: FactRevisionInfo
    after: FactRevisionInfo


@dataclass(frozen=True)
class VersionDiff:
    """Facts added / removed / changed going from version `old` to version `new`."""

    old: int
    new: int
    added: tuple[FactRevisionInfo, ...]
    removed: tuple[FactRevisionInfo, ...]
    changed: tuple[FactChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old, "new": self.new,
            "added": [r.to_dict() for r in self.added],
            "removed": [r.to_dict() for r in self.removed],
            "changed": [{"fact_id": c.fact_id, "before": c.before.to_dict(), "after": c.after.to_dict()}
                        for c in self.changed],
        }


def derive_state(version_id: int, pointer: int, ever_promoted: set[int], gate_passed: bool | None) -> VersionState:
    if version_id == pointer:
        return "promoted"
    if version_id in ever_promoted:
        return "retired"
    if gate_passed is False and version_id != 0:
        return "rejected"
    return "candidate"
