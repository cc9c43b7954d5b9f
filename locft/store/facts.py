"""Facts: adding, revising and retracting one at a time (append-only revisions; duplicates and
conflicts by normalized prompt and answer), and reading the active, pending and retracted sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import ConflictError, NotFoundError, StoreError
from locft.facts import EditFact, Probe, validate_fact
from locft.store import events as ev
from locft.store.db import StoreBase, aware, clamp_count, utcnow
from locft.store.events import append_event
from locft.store.fact_records import (
    AddResult,
    FactCounts,
    FactEntry,
    FactFilter,
    FactHistory,
    FactInfo,
    FactRevisionInfo,
    PendingFact,
    PendingKind,
    RevisionResult,
)
from locft.store.fact_rows import (
    active_with_prompt_key,
    clean_tags,
    current_states,
    fact_keys,
    fact_of,
    latest_ids,
    latest_of,
    latest_revisions,
    new_revision,
    pending_ids,
    revisions_by_id,
    same_content,
)
from locft.store.models import Fact, FactRevision

_UNSET: Any = object()  # "leave this field as it is" in revise_fact


def _pending(session: Session) -> list[PendingFact]:
    ids = pending_ids(session)
    rows = revisions_by_id(session, [rev_id for _, _, rev_id, _ in ids])
    return [PendingFact(kind, fact_id, FactRevisionInfo.of(rows[rev_id]), had) for kind, fact_id, rev_id, had in ids]


def _conflict_message(existing: FactRevision) -> str:
    return (
        f"conflicts with fact {existing.fact_id}, which answers it with {existing.answer!r}; "
        f"use --replace to revise it (or `locft facts edit {existing.fact_id} --answer ...`)"
    )


class FactsMixin(StoreBase):
    # ---- writing --------------------------------------------------------------------------

    def add_fact(
        self,
        fact: EditFact,
        *,
        source: str | None = None,
        tags: Sequence[str] = (),
        author: str | None = None,
        replace: bool = False,
    ) -> AddResult:
        """Add one fact in one transaction.

        Same normalized prompt and answer as an active fact: a duplicate, nothing written.
        Same prompt, other answer: ConflictError naming the fact, unless `replace`, which writes
        a new revision of that fact.
        """
        fact = validate_fact(fact)
        tags = clean_tags(tags)
        prompt_key, answer_key = fact_keys(fact)
        with self._write() as session:
            matches = active_with_prompt_key(session, prompt_key)
            same = [m for m in matches if m.answer_key == answer_key]
            other = [m for m in matches if m.answer_key != answer_key]
            now = utcnow()
            if same:  # the store already says this; extras (paraphrases...) change with `facts edit`
                return AddResult("duplicate", same[0].fact_id, FactRevisionInfo.of(same[0]))
            if other and not replace:
                raise ConflictError(f"{fact.prompt!r} {_conflict_message(other[0])}")
            target = other[0] if other else None
            if target is None:
                row = Fact(created_at=now)
                session.add(row)
                session.flush()
                assert row.id is not None
                rev = new_revision(row.id, 1, fact, source=source, tags=tags, author=author, at=now)
                session.add(rev)
                session.flush()
                append_event(session, ev.FACT_ADDED, actor=author, fact_id=row.id, at=now,
                             payload={"revision_id": rev.id, "prompt": fact.prompt, "answer": fact.answer})
                return AddResult("added", row.id, FactRevisionInfo.of(rev))
            rev = new_revision(target.fact_id, target.revision + 1, fact, source=source, tags=tags,
                               author=author, note="replaced by add-fact --replace", at=now)
            session.add(rev)
            session.flush()
            append_event(session, ev.FACT_REVISED, actor=author, fact_id=target.fact_id, at=now, payload={
                "revision_id": rev.id, "previous_revision_id": target.id, "answer": fact.answer,
                "previous_answer": target.answer, "via": "replace",
            })
            return AddResult("revised", target.fact_id, FactRevisionInfo.of(rev), previous_answer=target.answer)

    def revise_fact(
        self,
        fact_id: int,
        *,
        answer: str = _UNSET,
        prompt: str = _UNSET,
        subject: str | None = _UNSET,
        paraphrases: Sequence[str] = _UNSET,
        probes: Sequence[Probe] = _UNSET,
        source: str | None = _UNSET,
        tags: Sequence[str] = _UNSET,
        author: str | None = None,
        note: str | None = None,
    ) -> RevisionResult:
        """Write a new revision with the given fields changed (the others carried over)."""
        with self._write() as session:
            current = latest_of(session, fact_id)
            if current.retracted:
                raise StoreError(f"fact {fact_id} is retracted; add it again with `locft add-fact`")
            old = fact_of(current)
            fact = validate_fact(EditFact(
                prompt=old.prompt if prompt is _UNSET else prompt,
                answer=old.answer if answer is _UNSET else answer,
                subject=old.subject if subject is _UNSET else subject,
                paraphrases=old.paraphrases if paraphrases is _UNSET else tuple(paraphrases),
                probes=old.probes if probes is _UNSET else tuple(probes),
            ))
            new_source = current.source if source is _UNSET else source
            new_tags = tuple(current.tags or ()) if tags is _UNSET else clean_tags(tags)
            if same_content(current, fact, new_source, new_tags):
                return RevisionResult(False, FactRevisionInfo.of(current))
            prompt_key, _ = fact_keys(fact)
            if prompt_key != current.prompt_key:
                clash = [m for m in active_with_prompt_key(session, prompt_key) if m.fact_id != fact_id]
                if clash:
                    raise ConflictError(
                        f"the new prompt {fact.prompt!r} is already fact {clash[0].fact_id} "
                        f"(answer {clash[0].answer!r}); edit or retract that one instead"
                    )
            now = utcnow()
            rev = new_revision(fact_id, current.revision + 1, fact, source=new_source, tags=new_tags,
                               author=author, note=note, at=now)
            session.add(rev)
            session.flush()
            append_event(session, ev.FACT_REVISED, actor=author, fact_id=fact_id, at=now, payload={
                "revision_id": rev.id, "previous_revision_id": current.id, "answer": fact.answer,
                "previous_answer": current.answer, "note": note,
            })
            return RevisionResult(True, FactRevisionInfo.of(rev))

    def retract_fact(self, fact_id: int, *, author: str | None = None, reason: str | None = None) -> FactRevisionInfo:
        """Write a tombstone revision: the fact leaves the active set (its history stays)."""
        with self._write() as session:
            current = latest_of(session, fact_id)
            if current.retracted:
                raise StoreError(f"fact {fact_id} is already retracted")
            now = utcnow()
            tomb = new_revision(fact_id, current.revision + 1, fact_of(current), source=current.source,
                                tags=tuple(current.tags or ()), author=author, note=reason, retracted=True, at=now)
            session.add(tomb)
            session.flush()
            append_event(session, ev.FACT_RETRACTED, actor=author, fact_id=fact_id, at=now, payload={
                "revision_id": tomb.id, "previous_revision_id": current.id, "reason": reason,
            })
            return FactRevisionInfo.of(tomb)

    # ---- reading --------------------------------------------------------------------------

    def active_facts(self) -> list[FactEntry]:
        """Every active fact's current revision, oldest fact first: what a round trains on."""
        with self._read() as session:
            return [
                FactEntry(row.id or 0, row.fact_id, fact_of(row))
                for row in latest_revisions(session) if not row.retracted
            ]

    def pending_facts(self) -> list[PendingFact]:
        """Active facts the promoted version lacks (added / revised) and its facts since retracted."""
        with self._read() as session:
            return _pending(session)

    def count_facts(self) -> FactCounts:
        with self._read() as session:
            states = current_states(session)
            pending = len(pending_ids(session, states))
        retracted = sum(1 for _, _, r in states if r)
        return FactCounts(active=len(states) - retracted, retracted=retracted, pending=pending)

    def get_fact(self, fact_id: int) -> FactHistory:
        """A fact and its whole history (NotFoundError when unknown)."""
        with self._read() as session:
            fact = session.get(Fact, fact_id)
            if fact is None:
                raise NotFoundError(f"no fact with id {fact_id}; `locft facts list` shows the ids")
            rows = list(session.exec(
                select(FactRevision).where(FactRevision.fact_id == fact_id).order_by(col(FactRevision.id))
            ))
        revisions = tuple(FactRevisionInfo.of(r) for r in rows)
        current = revisions[-1]
        info = FactInfo(
            fact_id=fact_id, status="retracted" if current.retracted else "active", current=current,
            revisions=len(revisions), created_at=aware(fact.created_at) or fact.created_at,
        )
        return FactHistory(info, revisions)

    def list_facts(
        self,
        status: FactFilter = "active",
        *,
        search: str | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[FactInfo]:
        """Facts by current status (or pending since the promoted version), newest first.

        `search`: case-insensitive substring of the prompt, answer or subject.
        """
        limit, offset = clamp_count(limit), clamp_count(offset) or 0
        with self._read() as session:
            latest = latest_ids()
            counts = (
                select(FactRevision.fact_id, sa.func.count().label("n"))
                .group_by(col(FactRevision.fact_id)).subquery()
            )
            query = (
                select(FactRevision, counts.c.n, Fact.created_at)
                .join(latest, col(FactRevision.id) == latest.c.rid)
                .join(counts, col(FactRevision.fact_id) == counts.c.fact_id)
                .join(Fact, col(Fact.id) == col(FactRevision.fact_id))
            )
            if status == "active":
                query = query.where(col(FactRevision.retracted).is_(False))
            elif status == "retracted":
                query = query.where(col(FactRevision.retracted).is_(True))
            elif status == "pending":
                return _list_pending(session, search, limit, offset)
            elif status != "all":
                raise StoreError(f"unknown fact status {status!r}; use active, pending, retracted or all")
            if search:
                pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                query = query.where(sa.or_(*(
                    sa.func.lower(c).like(pattern, escape="\\")
                    for c in (col(FactRevision.prompt), col(FactRevision.answer), col(FactRevision.subject))
                )))  # lower() is ASCII-only in SQLite; _matches() is the exact rule for pending
            query = query.order_by(sa.desc(col(FactRevision.fact_id))).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            rows = list(session.exec(query))
        return [
            FactInfo(
                fact_id=rev.fact_id, status="retracted" if rev.retracted else "active",
                current=FactRevisionInfo.of(rev), revisions=n, created_at=aware(created) or created,
            )
            for rev, n, created in rows
        ]


def _matches(rev: FactRevision, search: str | None) -> bool:
    if not search:
        return True
    needle = search.casefold()
    return any(needle in (text or "").casefold() for text in (rev.prompt, rev.answer, rev.subject))


def _list_pending(session: Session, search: str | None, limit: int | None, offset: int) -> list[FactInfo]:
    """Pending facts, newest first. Texts are loaded for the page only (or, with a search,
    in chunks until the page is full)."""
    ids = sorted(pending_ids(session), key=lambda p: -p[1])
    page: list[tuple[PendingKind, FactRevision]] = []
    skipped = 0
    step = 500 if search else (len(ids) if limit is None else offset + limit)
    for start in range(0, len(ids), max(step, 1)):
        part = ids[start : start + max(step, 1)]
        rows = revisions_by_id(session, [rev_id for _, _, rev_id, _ in part])
        for kind, _, rev_id, _ in part:
            row = rows[rev_id]
            if not _matches(row, search):
                continue
            if skipped < offset:
                skipped += 1
                continue
            page.append((kind, row))
        if limit is not None and len(page) >= limit:
            break
    if limit is not None:
        page = page[:limit]
    fact_ids = [row.fact_id for _, row in page]
    counts = dict(session.exec(
        select(FactRevision.fact_id, sa.func.count()).where(col(FactRevision.fact_id).in_(fact_ids))
        .group_by(col(FactRevision.fact_id))
    ).all()) if fact_ids else {}
    created = dict(session.exec(
        select(Fact.id, Fact.created_at).where(col(Fact.id).in_(fact_ids))
    ).all()) if fact_ids else {}
    return [
        FactInfo(
            fact_id=row.fact_id, status="retracted" if row.retracted else "active", current=FactRevisionInfo.of(row),
            revisions=counts.get(row.fact_id, 1), created_at=aware(created[row.fact_id]) or created[row.fact_id],
            pending=kind,
        )
        for kind, row in page
    ]
