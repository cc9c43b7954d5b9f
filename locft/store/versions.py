"""Versions: immutable rows, gate results, the promoted pointer, promote / rollback, diffs.

A version's state is derived, never stored:
  promoted  the pointer is on it
  retired   it was promoted once and the pointer has moved on
  rejected  its newest gate result failed (and it was never promoted)
  candidate anything else: not gated yet, or gated and passed but not promoted
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import NotFoundError, SnapshotError, StoreError
from locft.facts import fact_set_digest as digest_of_facts
from locft.store import events as ev
from locft.store.db import StoreBase, aware, to_utc, utcnow
from locft.store.events import append_event
from locft.store.facts import FactEntry, FactRevisionInfo, _fact_of, _revisions_by_id
from locft.store.models import FactRevision, GateResult, PromotedPointer, Promotion, Version, VersionFact

log = logging.getLogger(__name__)

VersionState = Literal["candidate", "promoted", "rejected", "retired"]
TENSORS_FILE = "tensors.safetensors"  # as written by locft.engine.snapshot (not imported: no torch here)
MANIFEST_FILE = "manifest.json"


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
    def of(cls, row: GateResult) -> "GateResultInfo":
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
    def of(cls, row: Promotion) -> "PromotionInfo":
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


def snapshot_digest(snapshot_dir: Path) -> tuple[str, int]:
    """sha256 and size of a snapshot's tensors file (what the Version row records)."""
    path = Path(snapshot_dir) / TENSORS_FILE
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {snapshot_dir}: {TENSORS_FILE} is missing") from None
    return h.hexdigest(), size


def _pointer(session: Session) -> PromotedPointer:
    pointer = session.get(PromotedPointer, 1)
    if pointer is None:
        raise StoreError("the store has no promoted version pointer; is it initialized? (`locft init`)")
    return pointer


def _version_row(session: Session, version_id: int) -> Version:
    row = session.get(Version, version_id)
    if row is None:
        raise NotFoundError(f"no version {version_id}; `locft versions list` shows them")
    return row


def _latest_gates(session: Session, version_ids: Sequence[int] | None = None) -> dict[int, GateResult]:
    newest = (
        select(sa.func.max(GateResult.id).label("gid")).group_by(col(GateResult.version_id)).subquery()
    )
    query = select(GateResult).join(newest, col(GateResult.id) == newest.c.gid)
    if version_ids is not None:
        query = query.where(col(GateResult.version_id).in_(list(version_ids)))
    return {row.version_id: row for row in session.exec(query)}


def _ever_promoted(session: Session) -> set[int]:
    return set(session.exec(select(Promotion.version_id).distinct()))


class VersionsMixin(StoreBase):
    def _snapshot_present(self, row: Version) -> bool:
        return row.snapshot_path is None or (self.home.absolute(row.snapshot_path) / TENSORS_FILE).is_file()

    def _info(self, row: Version, pointer: int, ever: set[int], gate: GateResult | None) -> VersionInfo:
        assert row.id is not None
        return VersionInfo(
            id=row.id, parent_id=row.parent_id,
            state=derive_state(row.id, pointer, ever, None if gate is None else gate.passed),
            base_fingerprint=row.base_fingerprint, edit_config=dict(row.edit_config or {}),
            fact_count=row.fact_count, fact_set_digest=row.fact_set_digest, snapshot_path=row.snapshot_path,
            snapshot_sha256=row.snapshot_sha256, snapshot_size=row.snapshot_size,
            snapshot_present=self._snapshot_present(row), round_id=row.round_id, note=row.note,
            created_at=aware(row.created_at) or row.created_at,
            gate=GateResultInfo.of(gate) if gate else None,
        )

    # ---- recording ------------------------------------------------------------------------

    def record_base_fingerprint(self, fingerprint: str, *, actor: str | None = None) -> None:
        """Remember the base model's fingerprint on version 0 (once); a different one is refused."""
        with self._write() as session:
            _check_base(session, fingerprint, actor)

    def record_version(
        self,
        *,
        revision_ids: Sequence[int],
        snapshot_dir: Path,
        base_fingerprint: str,
        edit_config: Mapping[str, Any],
        parent_id: int | None = None,
        round_id: int | None = None,
        fact_set_digest: str | None = None,
        snapshot_sha256: str | None = None,
        snapshot_size: int | None = None,
        note: str | None = None,
        actor: str | None = None,
    ) -> VersionInfo:
        """Write a new, immutable version row for a snapshot directory that already exists.

        `revision_ids`: exactly the fact revisions trained on (FactEntry.revision_id). The digest
        is recomputed from them; a `fact_set_digest` that disagrees is refused. sha256/size are
        computed from the tensors file unless given. `parent_id` None: the promoted version.
        """
        snapshot_dir = Path(snapshot_dir)
        if not snapshot_dir.is_absolute():
            snapshot_dir = self.home.root / snapshot_dir
        snapshot_dir = snapshot_dir.resolve()
        if not snapshot_dir.is_dir():
            raise SnapshotError(f"snapshot directory {snapshot_dir} does not exist; write it before its version")
        if self.home.snapshots_dir.resolve() not in snapshot_dir.parents:
            raise SnapshotError(f"snapshot {snapshot_dir} is not under {self.home.snapshots_dir}")
        if snapshot_sha256 is None or snapshot_size is None:
            snapshot_sha256, snapshot_size = snapshot_digest(snapshot_dir)
        relative = self.home.relative(snapshot_dir)
        ids = sorted(set(revision_ids))
        if len(ids) != len(revision_ids):
            raise StoreError("record_version: revision ids repeat")
        with self._write() as session:
            _check_base(session, base_fingerprint, actor)
            rows = _revisions_by_id(session, ids)
            missing = [i for i in ids if i not in rows]
            if missing:
                raise NotFoundError(f"record_version: unknown fact revision id(s) {missing[:10]}")
            facts_seen: set[int] = set()
            for row in rows.values():
                if row.retracted:
                    raise StoreError(f"record_version: revision {row.id} is a retraction, not a fact to train on")
                if row.fact_id in facts_seen:
                    raise StoreError(f"record_version: two revisions of fact {row.fact_id}")
                facts_seen.add(row.fact_id)
            digest = digest_of_facts(_fact_of(r) for r in rows.values())
            if fact_set_digest is not None and fact_set_digest != digest:
                raise StoreError(
                    f"record_version: the fact set digest {fact_set_digest[:12]}... does not match the "
                    f"revisions given ({digest[:12]}...); the snapshot was trained on other facts"
                )
            taken = session.exec(select(Version.id).where(Version.snapshot_path == relative)).first()
            if taken is not None:
                raise StoreError(f"snapshot {relative} already belongs to version {taken}")
            if parent_id is None:
                parent_id = _pointer(session).version_id
            else:
                _version_row(session, parent_id)
            now = utcnow()
            version = Version(
                parent_id=parent_id, base_fingerprint=base_fingerprint, edit_config=dict(edit_config),
                fact_count=len(ids), fact_set_digest=digest, snapshot_path=relative,
                snapshot_sha256=snapshot_sha256, snapshot_size=snapshot_size, round_id=round_id, note=note,
                created_at=now,
            )
            session.add(version)
            session.flush()
            assert version.id is not None
            if ids:
                session.execute(sa.insert(VersionFact), [{"version_id": version.id, "revision_id": i} for i in ids])
            append_event(session, ev.VERSION_RECORDED, actor=actor, version_id=version.id, round_id=round_id, at=now,
                         payload={"parent_id": parent_id, "fact_count": len(ids), "snapshot": relative})
            pointer = _pointer(session).version_id
            return self._info(version, pointer, _ever_promoted(session), None)

    def record_gate_result(
        self,
        version_id: int,
        *,
        passed: bool,
        metrics: Mapping[str, Any],
        report: Mapping[str, Any] | None = None,
        round_id: int | None = None,
        actor: str | None = None,
    ) -> GateResultInfo:
        """Append a gate outcome; a failed one makes a never-promoted version 'rejected'."""
        with self._write() as session:
            _version_row(session, version_id)
            now = utcnow()
            row = GateResult(version_id=version_id, passed=passed, metrics=dict(metrics),
                             report=dict(report or {}), round_id=round_id, created_at=now)
            session.add(row)
            session.flush()
            append_event(session, ev.VERSION_GATED, actor=actor, version_id=version_id, round_id=round_id, at=now,
                         payload={"passed": passed, "gate_result_id": row.id})
            if not passed:
                append_event(session, ev.VERSION_REJECTED, actor=actor, version_id=version_id, round_id=round_id,
                             at=now, payload={"reasons": (report or {}).get("reasons")})
            return GateResultInfo.of(row)

    # ---- the pointer ----------------------------------------------------------------------

    def promote(
        self, version_id: int, *, force: bool = False, actor: str | None = None, reason: str | None = None
    ) -> PointerMove:
        """Serve `version_id`. A version that failed its gates, or was never gated, needs force."""
        with self._write() as session:
            row = _version_row(session, version_id)
            pointer = _pointer(session)
            if pointer.version_id == version_id:
                return PointerMove(version_id, version_id, "promote", False, changed=False)
            forced = False
            if version_id != 0:
                gate = _latest_gates(session, [version_id]).get(version_id)
                if gate is None or not gate.passed:
                    why = "has not been gated" if gate is None else "failed its gates" + _reasons(gate)
                    if not force:
                        raise StoreError(f"version {version_id} {why}; `locft promote {version_id} --force` "
                                         "serves it anyway")
                    forced = True
            self._require_snapshot(row)
            return _move(session, pointer, version_id, "promote", forced, actor, reason)

    def rollback(self, to: int | None = None, *, actor: str | None = None, reason: str | None = None) -> PointerMove:
        """Move the pointer back: to the version promoted before the current one, or to `to`
        (which must have been promoted before)."""
        with self._write() as session:
            pointer = _pointer(session)
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
                _version_row(session, to)
                if to == pointer.version_id:
                    raise StoreError(f"version {to} is already promoted")
                if to not in {v for _, v in history}:
                    raise StoreError(f"version {to} was never promoted, so there is nothing to roll back to; "
                                     f"`locft promote {to}` promotes it")
                target = to
            self._require_snapshot(_version_row(session, target))
            return _move(session, pointer, target, "rollback", False, actor, reason)

    def _require_snapshot(self, row: Version) -> None:
        """The pointer only moves onto a snapshot that is there and intact (its sha256 as recorded):
        a corrupted one would be refused by every server anyway, after the move."""
        if not self._snapshot_present(row):
            raise SnapshotError(f"the snapshot of version {row.id} ({row.snapshot_path}) is gone "
                                "(deleted by retention or by hand); it cannot be served")
        if row.snapshot_path is not None and row.snapshot_sha256 is not None:
            sha, size = snapshot_digest(self.home.absolute(row.snapshot_path))
            if sha != row.snapshot_sha256 or (row.snapshot_size is not None and size != row.snapshot_size):
                raise SnapshotError(
                    f"the snapshot of version {row.id} ({row.snapshot_path}) is corrupted: sha256 {sha[:12]}... "
                    f"({size} bytes), recorded {row.snapshot_sha256[:12]}... ({row.snapshot_size} bytes); it "
                    "cannot be served (a new round rebuilds the facts from the base model)")

    # ---- reading --------------------------------------------------------------------------

    def promoted_version(self) -> VersionInfo:
        with self._read() as session:
            pointer = _pointer(session).version_id
            return self._info(_version_row(session, pointer), pointer, _ever_promoted(session),
                              _latest_gates(session, [pointer]).get(pointer))

    def get_version(self, version_id: int) -> VersionInfo:
        with self._read() as session:
            row = _version_row(session, version_id)
            return self._info(row, _pointer(session).version_id, _ever_promoted(session),
                              _latest_gates(session, [version_id]).get(version_id))

    def list_versions(self, *, state: VersionState | None = None) -> list[VersionInfo]:
        """Every version (newest first) with its derived state."""
        with self._read() as session:
            pointer = _pointer(session).version_id
            ever = _ever_promoted(session)
            gates = _latest_gates(session)
            rows = list(session.exec(select(Version).order_by(sa.desc(col(Version.id)))))
        infos = [self._info(r, pointer, ever, gates.get(r.id or 0)) for r in rows]
        return [v for v in infos if state is None or v.state == state]

    def gate_results(self, version_id: int) -> list[GateResultInfo]:
        """Every gate evaluation of a version, oldest first."""
        with self._read() as session:
            _version_row(session, version_id)
            rows = session.exec(select(GateResult).where(GateResult.version_id == version_id)
                                .order_by(col(GateResult.id)))
            return [GateResultInfo.of(r) for r in rows]

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

    def version_facts(self, version_id: int) -> list[FactEntry]:
        """Exactly the fact revisions a version was trained on."""
        with self._read() as session:
            _version_row(session, version_id)
            rows = session.exec(
                select(FactRevision).join(VersionFact, col(VersionFact.revision_id) == col(FactRevision.id))
                .where(VersionFact.version_id == version_id).order_by(col(FactRevision.fact_id))
            )
            return [FactEntry(r.id or 0, r.fact_id, _fact_of(r)) for r in rows]

    def snapshot_dir(self, version_id: int) -> Path | None:
        """The absolute snapshot directory of a version (None for version 0, the base model)."""
        with self._read() as session:
            row = _version_row(session, version_id)
        return None if row.snapshot_path is None else self.home.absolute(row.snapshot_path)

    def verify_version_snapshot(self, version_id: int) -> None:
        """Raise SnapshotError unless the snapshot's tensors file matches the recorded sha256."""
        with self._read() as session:
            row = _version_row(session, version_id)
        if row.snapshot_path is None:
            return
        self._require_snapshot(row)

    def diff_versions(self, old: int, new: int) -> VersionDiff:
        """Facts added, removed and changed (another revision) from version `old` to `new`."""
        with self._read() as session:
            _version_row(session, old)
            _version_row(session, new)

            def trained(version_id: int) -> dict[int, FactRevision]:
                rows = session.exec(
                    select(FactRevision).join(VersionFact, col(VersionFact.revision_id) == col(FactRevision.id))
                    .where(VersionFact.version_id == version_id)
                )
                return {r.fact_id: r for r in rows}

            a, b = trained(old), trained(new)
        added = tuple(FactRevisionInfo.of(b[f]) for f in sorted(b.keys() - a.keys()))
        removed = tuple(FactRevisionInfo.of(a[f]) for f in sorted(a.keys() - b.keys()))
        changed = tuple(
            FactChange(f, FactRevisionInfo.of(a[f]), FactRevisionInfo.of(b[f]))
            for f in sorted(a.keys() & b.keys()) if a[f].id != b[f].id
        )
        return VersionDiff(old, new, added, removed, changed)


def _reasons(gate: GateResult) -> str:
    reasons = (gate.report or {}).get("reasons")
    if isinstance(reasons, list) and reasons:
        return " (" + "; ".join(str(r) for r in reasons[:3]) + ")"
    return ""


def _check_base(session: Session, fingerprint: str, actor: str | None) -> None:
    if not fingerprint or not isinstance(fingerprint, str):
        raise StoreError("a base fingerprint is required")
    base = _version_row(session, 0)
    if base.base_fingerprint is None:
        base.base_fingerprint = fingerprint
        session.add(base)
        append_event(session, ev.BASE_FINGERPRINT_RECORDED, actor=actor, version_id=0,
                     payload={"fingerprint": fingerprint})
        session.flush()
    elif base.base_fingerprint != fingerprint:
        raise StoreError(
            f"this store was built on base model {base.base_fingerprint[:16]}..., not {fingerprint[:16]}...; "
            "its versions only apply to that model: use another LOCFT_HOME for a different base model"
        )


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
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise StoreError("the promoted version changed while moving it; try again")
    kind = ev.VERSION_PROMOTED if action == "promote" else ev.VERSION_ROLLED_BACK
    append_event(session, kind, actor=actor, version_id=target, at=now,
                 payload={"previous_version_id": previous, "forced": forced, "reason": reason})
    log.info("%s: version %s -> %s%s", action, previous, target, " (forced)" if forced else "")
    return PointerMove(target, previous, action, forced, changed=True)
