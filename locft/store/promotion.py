"""The promoted pointer: which version is served, moved by promote and rollback, and its history.

Every move appends a Promotion row, so what was served when, and why, can always be told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import NotFoundError, StoreError
from locft.store import events as ev
from locft.store.db import StoreBase, aware, to_utc, utcnow
from locft.store.events import append_event
from locft.store.models import GateResult, PromotedPointer, Promotion
from locft.store.snapshots import require_snapshot
from locft.store.versions import latest_gates, promoted_pointer, version_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionInfo:
    id: int
    version_id: int
    previous_version_id: int | None
    action: str  # init / promote / rollback
    forced: bool
    actor: str | None
    reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Promotion) -> PromotionInfo:
        return cls(row.id or 0, row.version_id, row.previous_version_id, row.action, row.forced, row.actor,
                   row.reason, aware(row.created_at) or row.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "version_id": self.version_id, "previous_version_id": self.previous_version_id,
            "action": self.action, "forced": self.forced, "actor": self.actor, "reason": self.reason,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class PointerMove:
    """The result of promote / rollback. `changed` False: it was already there."""

    version_id: int
    previous_version_id: int
    action: str
    forced: bool
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_id": self.version_id, "previous_version_id": self.previous_version_id,
            "action": self.action, "forced": self.forced, "changed": self.changed,
        }


def rollback_stack(history: Sequence[tuple[str, int]]) -> list[int]:
    """The versions a rollback walks back through, oldest first, from (action, version) history.

    promote pushes; rollback to a version on the stack pops back to it. So after
    0 -> 1 -> 2, rollback gives 1, and a second rollback gives 0 (not 2 again).
    """
    stack: list[int] = []
    for action, version_id in history:
        if action == "rollback" and version_id in stack:
            while stack[-1] != version_id:
                stack.pop()
        elif not stack or stack[-1] != version_id:
            stack.append(version_id)
    return stack


class PromotionMixin(StoreBase):
    def promote(
        self, version_id: int, *, force: bool = False, actor: str | None = None, reason: str | None = None
    ) -> PointerMove:
        """Serve `version_id`. A version that failed its gates, or was never gated, needs force."""
        with self._write() as session:
            row = version_row(session, version_id)
            pointer = promoted_pointer(session)
            if pointer.version_id == version_id:
                return PointerMove(version_id, version_id, "promote", False, changed=False)
            forced = False
            if version_id != 0:
                gate = latest_gates(session, [version_id]).get(version_id)
                if gate is None or not gate.passed:
                    why = "has not been gated" if gate is None else "failed its gates" + _reasons(gate)
                    if not force:
                        raise StoreError(f"version {version_id} {why}; `locft promote {version_id} --force` "
                                         "serves it anyway")
                    forced = True
            require_snapshot(self.home, row)
            return _move(session, pointer, version_id, "promote", forced, actor, reason)

    def rollback(self, to: int | None = None, *, actor: str | None = None, reason: str | None = None) -> PointerMove:
        """Move the pointer back: to the version promoted before the current one, or to `to`
        (which must have been promoted before)."""
        with self._write() as session:
            pointer = promoted_pointer(session)
            history = [
                (p.action, p.version_id)
                for p in session.exec(select(Promotion).order_by(col(Promotion.id)))
            ]
            if to is None:
                stack = rollback_stack(history)
                if len(stack) < 2:
                    raise StoreError(f"nothing to roll back to: version {pointer.version_id} is the first "
                                     "promoted version")
                target = stack[-2]
            else:
                version_row(session, to)
                if to == pointer.version_id:
                    raise StoreError(f"version {to} is already promoted")
                if to not in {v for _, v in history}:
                    raise StoreError(f"version {to} was never promoted, so there is nothing to roll back to; "
                                     f"`locft promote {to}` promotes it")
                target = to
            require_snapshot(self.home, version_row(session, target))
            return _move(session, pointer, target, "rollback", False, actor, reason)

    def promotion_history(self) -> list[PromotionInfo]:
        """Every pointer move, oldest first (the first is version 0's 'init')."""
        with self._read() as session:
            return [PromotionInfo.of(p) for p in session.exec(select(Promotion).order_by(col(Promotion.id)))]

    def promotion_at(self, when: datetime) -> PromotionInfo:
        """The pointer move in effect at `when` (naive = UTC): which version was served then, and why."""
        with self._read() as session:
            row = session.exec(
                select(Promotion).where(col(Promotion.created_at) <= to_utc(when))
                .order_by(sa.desc(col(Promotion.id))).limit(1)
            ).first()
        if row is None:
            raise NotFoundError(f"the store did not exist yet at {when.isoformat()}")
        return PromotionInfo.of(row)


def _reasons(gate: GateResult) -> str:
    reasons = (gate.report or {}).get("reasons")
    if isinstance(reasons, list) and reasons:
        return " (" + "; ".join(str(r) for r in reasons[:3]) + ")"
    return ""


def _move(
    session: Session, pointer: PromotedPointer, target: int, action: str, forced: bool,
    actor: str | None, reason: str | None,
) -> PointerMove:
    now = utcnow()
    previous = pointer.version_id
    promotion = Promotion(version_id=target, previous_version_id=previous, action=action, forced=forced,
                          actor=actor, reason=reason, created_at=now)
    session.add(promotion)
    session.flush()
    assert promotion.id is not None
    # compare-and-set: the row must still point where we read it (no lost update)
    moved = session.execute(
        sa.update(PromotedPointer)
        .where(col(PromotedPointer.id) == 1, col(PromotedPointer.version_id) == previous)
        .values(version_id=target, promotion_id=promotion.id, updated_at=now)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        raise StoreError("the promoted version changed while moving it; try again")
    kind = ev.VERSION_PROMOTED if action == "promote" else ev.VERSION_ROLLED_BACK
    append_event(session, kind, actor=actor, version_id=target, at=now,
                 payload={"previous_version_id": previous, "forced": forced, "reason": reason})
    log.info("%s: version %s -> %s%s", action, previous, target, " (forced)" if forced else "")
    return PointerMove(target, previous, action, forced, changed=True)
