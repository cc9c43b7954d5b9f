"""Round bookkeeping for the daemon: rounds, explicit round requests, crash recovery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlmodel import col, select

from locft.errors import NotFoundError, StoreError
from locft.policies.schedule import TRIGGERS, Trigger
from locft.store import events as ev
from locft.store.db import StoreBase, aware, clamp_count, utcnow
from locft.store.events import append_event
from locft.store.models import GateResult, Promotion, Round, RoundRequest, Version

# How a round ended (its row says 'running' until then). 'candidate': its version passed the gates
# and waits for `locft promote` (manual promotion); 'skipped': the round decided not to train (it
# records no version).
RoundOutcome = Literal["promoted", "candidate", "rejected", "skipped", "failed", "interrupted"]
FINAL_OUTCOMES: tuple[str, ...] = get_args(RoundOutcome)


@dataclass(frozen=True)
class RoundInfo:
    id: int
    trigger: str
    actor: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    version_id: int | None
    error: str | None
    timings: dict[str, Any] | None
    loss_history: list[Any] | None

    @classmethod
    def of(cls, row: Round) -> RoundInfo:
        return cls(
            id=row.id or 0, trigger=row.trigger, actor=row.actor, started_at=aware(row.started_at) or row.started_at,
            finished_at=aware(row.finished_at), outcome=row.outcome, version_id=row.version_id, error=row.error,
            timings=None if row.timings is None else dict(row.timings),
            loss_history=None if row.loss_history is None else list(row.loss_history),
        )

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "trigger": self.trigger, "actor": self.actor, "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None, "outcome": self.outcome,
            "version_id": self.version_id, "error": self.error, "timings": self.timings,
            "loss_history": self.loss_history,
        }


@dataclass(frozen=True)
class RoundRequestInfo:
    id: int
    requested_at: datetime
    actor: str | None
    reason: str | None
    claimed_at: datetime | None
    round_id: int | None

    @classmethod
    def of(cls, row: RoundRequest) -> RoundRequestInfo:
        return cls(row.id or 0, aware(row.requested_at) or row.requested_at, row.actor, row.reason,
                   aware(row.claimed_at), row.round_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "requested_at": self.requested_at.isoformat(), "actor": self.actor, "reason": self.reason,
            "claimed_at": self.claimed_at.isoformat() if self.claimed_at else None, "round_id": self.round_id,
        }


@dataclass(frozen=True)
class ClaimedRequests:
    """Every request that was open, claimed at once: one round answers them all."""

    requests: tuple[RoundRequestInfo, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(r.id for r in self.requests)

    @property
    def first(self) -> RoundRequestInfo:
        return self.requests[0]


@dataclass(frozen=True)
class Recovery:
    """What close_dead_rounds found after a crash."""

    undecided_rounds: tuple[int, ...]  # died before a gate decision: closed as interrupted / failed
    released_requests: tuple[int, ...]  # claimed by a round that never started: open again
    # died after its decision was committed (its version promoted or rejected): closed with
    # that outcome, since the pointer already moved (or the version is already unpromotable)
    decided_rounds: tuple[int, ...] = ()


class RoundsMixin(StoreBase):
    def start_round(
        self, trigger: Trigger, *, actor: str | None = None, request_ids: Sequence[int] = ()
    ) -> RoundInfo:
        """Record a round as running (and link the requests it answers)."""
        if trigger not in TRIGGERS:
            raise StoreError(f"unknown round trigger {trigger!r}; one of {', '.join(TRIGGERS)}")
        with self._write() as session:
            now = utcnow()
            row = Round(trigger=trigger, actor=actor, started_at=now, outcome="running")
            session.add(row)
            session.flush()
            if request_ids:
                session.execute(
                    sa.update(RoundRequest).where(col(RoundRequest.id).in_(list(request_ids)))
                    .values(round_id=row.id, claimed_at=sa.func.coalesce(col(RoundRequest.claimed_at), now))
                )
            append_event(session, ev.ROUND_STARTED, actor=actor, round_id=row.id, at=now,
                         payload={"trigger": trigger, "request_ids": list(request_ids)})
            return RoundInfo.of(row)

    def finish_round(
        self,
        round_id: int,
        outcome: RoundOutcome,
        *,
        version_id: int | None = None,
        error: str | None = None,
        timings: Mapping[str, Any] | None = None,
        loss_history: Sequence[Any] | None = None,
        actor: str | None = None,
    ) -> RoundInfo:
        """Close a running round with its outcome (a round is finished once)."""
        if outcome not in FINAL_OUTCOMES:
            raise StoreError(f"unknown round outcome {outcome!r}; one of {', '.join(FINAL_OUTCOMES)}")
        with self._write() as session:
            row = session.get(Round, round_id)
            if row is None:
                raise NotFoundError(f"no round {round_id}")
            if row.outcome != "running":
                raise StoreError(f"round {round_id} already finished ({row.outcome})")
            now = utcnow()
            row.outcome, row.finished_at, row.version_id, row.error = outcome, now, version_id, error
            row.timings = None if timings is None else dict(timings)
            row.loss_history = None if loss_history is None else list(loss_history)
            session.add(row)
            append_event(session, ev.ROUND_FINISHED, actor=actor, round_id=round_id, version_id=version_id, at=now,
                         payload={"outcome": outcome, "error": error,
                                  "seconds": (now - row.started_at).total_seconds()})
            session.flush()
            return RoundInfo.of(row)

    def get_round(self, round_id: int) -> RoundInfo:
        with self._read() as session:
            row = session.get(Round, round_id)
            if row is None:
                raise NotFoundError(f"no round {round_id}")
            return RoundInfo.of(row)

    def last_round(self) -> RoundInfo | None:
        """The most recently started round (running or finished)."""
        rounds = self.list_rounds(limit=1)
        return rounds[0] if rounds else None

    def list_rounds(self, *, limit: int | None = 20) -> list[RoundInfo]:
        """Newest first."""
        query = select(Round).order_by(sa.desc(col(Round.id)))
        if limit is not None:
            query = query.limit(clamp_count(limit))
        with self._read() as session:
            return [RoundInfo.of(r) for r in session.exec(query)]

    def running_rounds(self) -> list[RoundInfo]:
        with self._read() as session:
            return [RoundInfo.of(r) for r in session.exec(select(Round).where(Round.outcome == "running"))]

    def close_dead_rounds(
        self, *, outcome: Literal["interrupted", "failed"] = "interrupted", error: str | None = None,
        actor: str | None = None,
    ) -> Recovery:
        """Rounds still 'running' whose process is gone (CALLER'S KNOWLEDGE: it holds the round
        lock): each is closed as `outcome`, or with its committed gate decision. Also reopens
        requests that were claimed but never got their round."""
        with self._write() as session:
            now = utcnow()
            rows = list(session.exec(select(Round).where(Round.outcome == "running")))
            undecided: list[int] = []
            decided: list[int] = []
            for row in rows:
                decision = _committed_decision(session, row.id or 0)
                row.finished_at = now
                if decision is None:
                    row.outcome = outcome
                    row.error = error or row.error or "the process running this round stopped before it finished"
                    undecided.append(row.id or 0)
                else:
                    row.outcome, row.version_id = decision
                    row.error = (f"the process stopped after version {row.version_id} was {row.outcome}, "
                                 "before the round was closed (no timings, snapshot retention not run)")
                    decided.append(row.id or 0)
                if row.outcome == "interrupted":
                    append_event(session, ev.ROUND_INTERRUPTED, actor=actor, round_id=row.id, at=now, payload={})
                else:
                    append_event(session, ev.ROUND_FINISHED, actor=actor, round_id=row.id, version_id=row.version_id,
                                 at=now, payload={"outcome": row.outcome, "error": row.error, "recovered": True,
                                                  "seconds": (now - row.started_at).total_seconds()})
                session.add(row)
            orphans = list(session.exec(
                select(RoundRequest).where(col(RoundRequest.claimed_at).is_not(None),
                                           col(RoundRequest.round_id).is_(None))
            ))
            for req in orphans:
                req.claimed_at = None
                session.add(req)
            session.flush()
            return Recovery(tuple(undecided), tuple(r.id or 0 for r in orphans), tuple(decided))

    # ---- explicit requests ------------------------------------------------------------------

    def request_round(self, *, actor: str | None = None, reason: str | None = None) -> RoundRequestInfo:
        """Ask for a round as soon as possible (the daemon claims it on its next poll)."""
        with self._write() as session:
            now = utcnow()
            row = RoundRequest(requested_at=now, actor=actor, reason=reason)
            session.add(row)
            session.flush()
            append_event(session, ev.ROUND_REQUESTED, actor=actor, at=now,
                         payload={"request_id": row.id, "reason": reason})
            return RoundRequestInfo.of(row)

    def open_round_requests(self) -> list[RoundRequestInfo]:
        with self._read() as session:
            rows = session.exec(select(RoundRequest).where(col(RoundRequest.claimed_at).is_(None))
                                .order_by(col(RoundRequest.id)))
            return [RoundRequestInfo.of(r) for r in rows]

    def claim_round_request(self) -> ClaimedRequests | None:
        """Atomically claim every open request (None when there is none). Two callers racing
        never both get the same request: SQLite takes the write lock before reading; PostgreSQL
        locks the rows read (FOR UPDATE), so a racing claimer waits, then skips the rows the
        first one claimed (READ COMMITTED re-checks `claimed_at IS NULL` on the locked rows)."""
        with self._write() as session:
            rows = list(session.exec(select(RoundRequest).where(col(RoundRequest.claimed_at).is_(None))
                                     .order_by(col(RoundRequest.id)).with_for_update()))
            if not rows:
                return None
            now = utcnow()
            claimed = session.execute(
                sa.update(RoundRequest)
                .where(col(RoundRequest.id).in_([r.id for r in rows]), col(RoundRequest.claimed_at).is_(None))
                .values(claimed_at=now)
            )
            if claimed.rowcount != len(rows):  # type: ignore[attr-defined]  # neither lock held: a bug
                raise StoreError("round requests were claimed concurrently; try again")
            for r in rows:
                session.refresh(r)
            return ClaimedRequests(tuple(RoundRequestInfo.of(r) for r in rows))


def _committed_decision(session: Any, round_id: int) -> tuple[str, int] | None:
    """('promoted' | 'rejected', version id) when a round's gate decision reached the database
    before its process died; None when it died earlier (then the round was interrupted)."""
    version = session.exec(select(Version).where(Version.round_id == round_id).order_by(col(Version.id).desc())).first()
    if version is None:
        return None
    gate = session.exec(select(GateResult).where(GateResult.version_id == version.id, GateResult.round_id == round_id)
                        .order_by(col(GateResult.id).desc())).first()
    if gate is None:
        return None
    if not gate.passed:
        return "rejected", version.id
    promoted = session.exec(select(Promotion).where(Promotion.version_id == version.id,
                                                    Promotion.action == "promote")).first()
    return ("promoted", version.id) if promoted is not None else None
