"""Versions: recording immutable version rows (a snapshot and exactly the fact revisions it was
trained on) and their gate results, and reading them back with their derived state.

Moving the promoted pointer is `promotion`; the records handed out are in `version_records`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import NotFoundError, SnapshotError, StoreError
from locft.facts import fact_set_digest as digest_of_facts
from locft.store import events as ev
from locft.store.db import StoreBase, aware, utcnow
from locft.store.events import append_event
from locft.store.fact_records import FactEntry, FactRevisionInfo
from locft.store.fact_rows import fact_of, revisions_by_id
from locft.store.models import FactRevision, GateResult, PromotedPointer, Promotion, Version, VersionFact
from locft.store.snapshots import require_snapshot, snapshot_digest, snapshot_present
from locft.store.version_records import (
    FactChange,
    GateResultInfo,
    VersionDiff,
    VersionInfo,
    VersionState,
    derive_state,
)


def promoted_pointer(session: Session) -> PromotedPointer:
    pointer = session.get(PromotedPointer, 1)
    if pointer is None:
        raise StoreError("the store has no promoted version pointer; is it initialized? (`locft init`)")
    return pointer


def version_row(session: Session, version_id: int) -> Version:
    row = session.get(Version, version_id)
    if row is None:
        raise NotFoundError(f"no version {version_id}; `locft versions list` shows them")
    return row


def latest_gates(session: Session, version_ids: Sequence[int] | None = None) -> dict[int, GateResult]:
    newest = (
        select(sa.func.max(GateResult.id).label("gid")).group_by(col(GateResult.version_id)).subquery()
    )
    query = select(GateResult).join(newest, col(GateResult.id) == newest.c.gid)
    if version_ids is not None:
        query = query.where(col(GateResult.version_id).in_(list(version_ids)))
    return {row.version_id: row for row in session.exec(query)}


def ever_promoted(session: Session) -> set[int]:
    return set(session.exec(select(Promotion.version_id).distinct()))


class VersionsMixin(StoreBase):
    def _info(self, row: Version, pointer: int, ever: set[int], gate: GateResult | None) -> VersionInfo:
        assert row.id is not None
        return VersionInfo(
            id=row.id, parent_id=row.parent_id,
            state=derive_state(row.id, pointer, ever, None if gate is None else gate.passed),
            base_fingerprint=row.base_fingerprint, edit_config=dict(row.edit_config or {}),
            fact_count=row.fact_count, fact_set_digest=row.fact_set_digest, snapshot_path=row.snapshot_path,
            snapshot_sha256=row.snapshot_sha256, snapshot_size=row.snapshot_size,
            snapshot_present=snapshot_present(self.home, row), round_id=row.round_id, note=row.note,
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
            rows = revisions_by_id(session, ids)
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
            digest = digest_of_facts(fact_of(r) for r in rows.values())
            if fact_set_digest is not None and fact_set_digest != digest:
                raise StoreError(
                    f"record_version: the fact set digest {fact_set_digest[:12]}... does not match the "
                    f"revisions given ({digest[:12]}...); the snapshot was trained on other facts"
                )
            taken = session.exec(select(Version.id).where(Version.snapshot_path == relative)).first()
            if taken is not None:
                raise StoreError(f"snapshot {relative} already belongs to version {taken}")
            if parent_id is None:
                parent_id = promoted_pointer(session).version_id
            else:
                version_row(session, parent_id)
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
            pointer = promoted_pointer(session).version_id
            return self._info(version, pointer, ever_promoted(session), None)

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
            version_row(session, version_id)
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

    # ---- reading --------------------------------------------------------------------------

    def promoted_version(self) -> VersionInfo:
        with self._read() as session:
            pointer = promoted_pointer(session).version_id
            return self._info(version_row(session, pointer), pointer, ever_promoted(session),
                              latest_gates(session, [pointer]).get(pointer))

    def get_version(self, version_id: int) -> VersionInfo:
        with self._read() as session:
            row = version_row(session, version_id)
            return self._info(row, promoted_pointer(session).version_id, ever_promoted(session),
                              latest_gates(session, [version_id]).get(version_id))

    def list_versions(self, *, state: VersionState | None = None) -> list[VersionInfo]:
        """Every version (newest first) with its derived state."""
        with self._read() as session:
            pointer = promoted_pointer(session).version_id
            ever = ever_promoted(session)
            gates = latest_gates(session)
            rows = list(session.exec(select(Version).order_by(sa.desc(col(Version.id)))))
        infos = [self._info(r, pointer, ever, gates.get(r.id or 0)) for r in rows]
        return [v for v in infos if state is None or v.state == state]

    def gate_results(self, version_id: int) -> list[GateResultInfo]:
        """Every gate evaluation of a version, oldest first."""
        with self._read() as session:
            version_row(session, version_id)
            rows = session.exec(select(GateResult).where(GateResult.version_id == version_id)
                                .order_by(col(GateResult.id)))
            return [GateResultInfo.of(r) for r in rows]

    def version_facts(self, version_id: int) -> list[FactEntry]:
        """Exactly the fact revisions a version was trained on."""
        with self._read() as session:
            version_row(session, version_id)
            rows = session.exec(
                select(FactRevision).join(VersionFact, col(VersionFact.revision_id) == col(FactRevision.id))
                .where(VersionFact.version_id == version_id).order_by(col(FactRevision.fact_id))
            )
            return [FactEntry(r.id or 0, r.fact_id, fact_of(r)) for r in rows]

    def snapshot_dir(self, version_id: int) -> Path | None:
        """The absolute snapshot directory of a version (None for version 0, the base model)."""
        with self._read() as session:
            row = version_row(session, version_id)
        return None if row.snapshot_path is None else self.home.absolute(row.snapshot_path)

    def verify_version_snapshot(self, version_id: int) -> None:
        """Raise SnapshotError unless the snapshot's tensors file matches the recorded sha256."""
        with self._read() as session:
            row = version_row(session, version_id)
        if row.snapshot_path is None:
            return
        require_snapshot(self.home, row)

    def diff_versions(self, old: int, new: int) -> VersionDiff:
        """Facts added, removed and changed (another revision) from version `old` to `new`."""
        with self._read() as session:
            version_row(session, old)
            version_row(session, new)

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


def _check_base(session: Session, fingerprint: str, actor: str | None) -> None:
    if not fingerprint or not isinstance(fingerprint, str):
        raise StoreError("a base fingerprint is required")
    base = version_row(session, 0)
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
