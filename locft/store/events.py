"""The audit log: one Event row per thing that happened (fact.added, version.promoted, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.store.db import StoreBase, aware, clamp_count, to_utc, utcnow
from locft.store.models import Event

# The kinds written by the store itself; the daemon may log its own (daemon.started, ...).
FACT_ADDED = "fact.added"
FACT_REVISED = "fact.revised"
FACT_RETRACTED = "fact.retracted"
FACTS_IMPORTED = "facts.imported"
VERSION_RECORDED = "version.recorded"
VERSION_GATED = "version.gated"
VERSION_REJECTED = "version.rejected"
VERSION_PROMOTED = "version.promoted"
VERSION_ROLLED_BACK = "version.rolled_back"
BASE_FINGERPRINT_RECORDED = "base.fingerprint_recorded"
ROUND_REQUESTED = "round.requested"
ROUND_STARTED = "round.started"
ROUND_FINISHED = "round.finished"
ROUND_INTERRUPTED = "round.interrupted"
SNAPSHOT_DELETED = "snapshot.deleted"


@dataclass(frozen=True)
class EventInfo:
    id: int
    created_at: datetime
    kind: str
    actor: str | None
    fact_id: int | None
    version_id: int | None
    round_id: int | None
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Event) -> EventInfo:
        return cls(
            id=row.id or 0, created_at=aware(row.created_at) or row.created_at, kind=row.kind,
            actor=row.actor, fact_id=row.fact_id, version_id=row.version_id, round_id=row.round_id,
            payload=dict(row.payload or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "created_at": self.created_at.isoformat(), "kind": self.kind, "actor": self.actor,
            "fact_id": self.fact_id, "version_id": self.version_id, "round_id": self.round_id,
            "payload": self.payload,
        }


def append_event(
    session: Session,
    kind: str,
    *,
    actor: str | None = None,
    payload: Mapping[str, Any] | None = None,
    fact_id: int | None = None,
    version_id: int | None = None,
    round_id: int | None = None,
    at: datetime | None = None,
) -> Event:
    """Add an event to the caller's transaction (so it commits, or not, with the change it logs)."""
    row = Event(
        created_at=at or utcnow(), kind=kind, actor=actor, fact_id=fact_id, version_id=version_id,
        round_id=round_id, payload=dict(payload or {}),
    )
    session.add(row)
    return row


class EventsMixin(StoreBase):
    def log_event(
        self,
        kind: str,
        *,
        actor: str | None = None,
        payload: Mapping[str, Any] | None = None,
        fact_id: int | None = None,
        version_id: int | None = None,
        round_id: int | None = None,
    ) -> EventInfo:
        """Append one event in its own transaction (for callers outside the store: the daemon)."""
        with self._write() as session:
            row = append_event(
                session, kind, actor=actor, payload=payload, fact_id=fact_id, version_id=version_id,
                round_id=round_id,
            )
            session.flush()
            return EventInfo.of(row)

    def list_events(
        self,
        *,
        kind: str | None = None,
        fact_id: int | None = None,
        version_id: int | None = None,
        round_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 100,
    ) -> list[EventInfo]:
        """Newest first. `kind` matches exactly or, ending in '.', as a prefix ("version.")."""
        query = select(Event)
        if kind:
            if kind.endswith("."):
                query = query.where(col(Event.kind).startswith(kind))
            else:
                query = query.where(Event.kind == kind)
        if fact_id is not None:
            query = query.where(Event.fact_id == fact_id)
        if version_id is not None:
            query = query.where(Event.version_id == version_id)
        if round_id is not None:
            query = query.where(Event.round_id == round_id)
        if since is not None:
            query = query.where(col(Event.created_at) >= to_utc(since))
        if until is not None:
            query = query.where(col(Event.created_at) <= to_utc(until))
        query = query.order_by(sa.desc(col(Event.id)))
        if limit is not None:
            query = query.limit(clamp_count(limit))
        with self._read() as session:
            return [EventInfo.of(row) for row in session.exec(query)]

