"""Facts: append-only revisions, conflicts and duplicates, imports, the active and pending sets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Literal, NamedTuple, Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import ConflictError, InvalidFactError, NotFoundError, StoreError
from locft.facts import EditFact, Probe, validate_fact
from locft.readers import FactRecord, RowError
from locft.store import events as ev
from locft.store.db import StoreBase, aware, clamp_count, utcnow
from locft.store.events import append_event
from locft.store.models import Event, Fact, FactRevision, PromotedPointer, VersionFact
from locft.text import normalize_answer, normalize_prompt

log = logging.getLogger(__name__)

FactStatus = Literal["active", "retracted"]
FactFilter = Literal["all", "active", "pending", "retracted"]
PendingKind = Literal["added", "revised", "retracted"]
# the store's progress: an import calls it with the number of rows written so far
ImportProgress = Callable[[int], None]

_UNSET: Any = object()  # "leave this field as it is" in revise_fact


@dataclass(frozen=True)
class FactRevisionInfo:
    """One revision of a fact, detached from the database."""

    revision_id: int
    fact_id: int
    revision: int
    retracted: bool
    prompt: str
    answer: str
    subject: str | None
    paraphrases: tuple[str, ...]
    probes: tuple[Probe, ...]
    source: str | None
    tags: tuple[str, ...]
    author: str | None
    note: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: FactRevision) -> "FactRevisionInfo":
        return cls(
            revision_id=row.id or 0, fact_id=row.fact_id, revision=row.revision, retracted=row.retracted,
            prompt=row.prompt, answer=row.answer, subject=row.subject,
            paraphrases=tuple(row.paraphrases or ()),
            probes=tuple(Probe(p["prompt"], p.get("answer")) for p in row.probes or ()),
            source=row.source, tags=tuple(row.tags or ()), author=row.author, note=row.note,
            created_at=aware(row.created_at) or row.created_at,
        )

    def to_edit_fact(self) -> EditFact:
        """What the engine trains on; `fact_id` is the store's id as a string."""
        return EditFact(self.prompt, self.answer, self.subject, self.paraphrases, self.probes, str(self.fact_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision_id": self.revision_id, "fact_id": self.fact_id, "revision": self.revision,
            "retracted": self.retracted, "prompt": self.prompt, "answer": self.answer, "subject": self.subject,
            "paraphrases": list(self.paraphrases), "probes": [p.to_dict() for p in self.probes],
            "source": self.source, "tags": list(self.tags), "author": self.author, "note": self.note,
            "created_at": self.created_at.isoformat(),
        }


class FactEntry(NamedTuple):
    """A fact revision as training sees it: (revision_id, fact_id, EditFact with fact_id set)."""

    revision_id: int
    fact_id: int
    fact: EditFact


@dataclass(frozen=True)
class FactInfo:
    """A fact's current state: its newest revision, plus how many revisions it has."""

    fact_id: int
    status: FactStatus
    current: FactRevisionInfo
    revisions: int
    created_at: datetime
    pending: PendingKind | None = None  # set by list_facts("pending"): added / revised / retracted

    def to_dict(self) -> dict[str, Any]:
        data = {
            "fact_id": self.fact_id, "status": self.status, "revisions": self.revisions,
            "created_at": self.created_at.isoformat(), "current": self.current.to_dict(),
        }
        if self.pending is not None:
            data["pending"] = self.pending
        return data


@dataclass(frozen=True)
class FactHistory:
    fact: FactInfo
    revisions: tuple[FactRevisionInfo, ...]  # oldest first

    def to_dict(self) -> dict[str, Any]:
        return {**self.fact.to_dict(), "history": [r.to_dict() for r in self.revisions]}


AddStatus = Literal["added", "duplicate", "revised"]


@dataclass(frozen=True)
class AddResult:
    """What add_fact did: added a new fact, found a duplicate, or (replace) revised a conflicting one."""

    status: AddStatus
    fact_id: int
    revision: FactRevisionInfo  # the new revision, or the existing one for a duplicate
    previous_answer: str | None = None  # for "revised"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "fact_id": self.fact_id, "revision_id": self.revision.revision_id,
            "previous_answer": self.previous_answer,
        }


@dataclass(frozen=True)
class RevisionResult:
    changed: bool
    revision: FactRevisionInfo


@dataclass(frozen=True)
class PendingFact:
    """A difference between the active facts and what the promoted version was trained on."""

    kind: PendingKind
    fact_id: int
    revision: FactRevisionInfo  # the current revision (a tombstone for "retracted")
    trained_revision_id: int | None  # what the promoted version has for this fact

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "fact_id": self.fact_id, "trained_revision_id": self.trained_revision_id,
            "revision": self.revision.to_dict(),
        }


@dataclass(frozen=True)
class FactCounts:
    active: int
    retracted: int
    pending: int  # added + revised + retracted since the promoted version


@dataclass(frozen=True)
class ImportIssue:
    line: int
    message: str
    fact_id: int | None = None  # the existing fact, for duplicates and conflicts

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message, "fact_id": self.fact_id}


@dataclass
class ImportSummary:
    """What an import found and did. `written` False: nothing was changed (all-or-nothing)."""

    total: int = 0
    added: list[ImportIssue] = field(default_factory=list)  # message: the new fact id
    revised: list[ImportIssue] = field(default_factory=list)
    duplicates: list[ImportIssue] = field(default_factory=list)
    conflicts: list[ImportIssue] = field(default_factory=list)
    invalid: list[ImportIssue] = field(default_factory=list)
    written: bool = False

    @property
    def refused(self) -> int:
        return len(self.conflicts) + len(self.invalid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "written": self.written,
            "added": len(self.added), "revised": len(self.revised),
            "duplicates": [i.to_dict() for i in self.duplicates],
            "conflicts": [i.to_dict() for i in self.conflicts],
            "invalid": [i.to_dict() for i in self.invalid],
        }


def _keys(fact: EditFact) -> tuple[str, str]:
    return normalize_prompt(fact.prompt), normalize_answer(fact.answer)


def _same_content(row: FactRevision, fact: EditFact, source: str | None, tags: Sequence[str]) -> bool:
    return (
        row.prompt == fact.prompt and row.answer == fact.answer and row.subject == fact.subject
        and tuple(row.paraphrases or ()) == fact.paraphrases
        and [dict(p) for p in row.probes or ()] == [p.to_dict() for p in fact.probes]
        and row.source == source and tuple(row.tags or ()) == tuple(tags)
    )


def _revision_values(
    fact_id: int, number: int, fact: EditFact, *, source: str | None, tags: Sequence[str],
    author: str | None, note: str | None = None, retracted: bool = False, at: datetime | None = None,
) -> dict[str, Any]:
    prompt_key, answer_key = _keys(fact)
    return dict(
        fact_id=fact_id, revision=number, retracted=retracted, prompt=fact.prompt, prompt_key=prompt_key,
        answer=fact.answer, answer_key=answer_key, subject=fact.subject, paraphrases=list(fact.paraphrases),
        probes=[p.to_dict() for p in fact.probes], source=source, tags=list(tags), author=author, note=note,
        created_at=at or utcnow(),
    )


def _new_revision(
    fact_id: int, number: int, fact: EditFact, *, source: str | None, tags: Sequence[str],
    author: str | None, note: str | None = None, retracted: bool = False, at: datetime | None = None,
) -> FactRevision:
    return FactRevision(**_revision_values(fact_id, number, fact, source=source, tags=tags, author=author,
                                           note=note, retracted=retracted, at=at))


def _fact_of(row: FactRevision) -> EditFact:
    return EditFact(
        row.prompt, row.answer, row.subject, tuple(row.paraphrases or ()),
        tuple(Probe(p["prompt"], p.get("answer")) for p in row.probes or ()), str(row.fact_id),
    )


def _latest_ids(fact_ids: Sequence[int] | None = None) -> Any:
    """Subquery: the newest revision id of every fact, or of `fact_ids` (revision ids only grow)."""
    query = select(FactRevision.fact_id, sa.func.max(FactRevision.id).label("rid"))
    if fact_ids is not None:
        query = query.where(col(FactRevision.fact_id).in_(list(fact_ids)))
    return query.group_by(col(FactRevision.fact_id)).subquery()


def _latest_revisions(session: Session, fact_ids: Sequence[int] | None = None) -> list[FactRevision]:
    latest = _latest_ids(fact_ids)
    query = select(FactRevision).join(latest, col(FactRevision.id) == latest.c.rid)
    return list(session.exec(query.order_by(col(FactRevision.fact_id))))


def _latest_of(session: Session, fact_id: int) -> FactRevision:
    row = session.exec(
        select(FactRevision).where(FactRevision.fact_id == fact_id).order_by(sa.desc(col(FactRevision.id))).limit(1)
    ).first()
    if row is None:
        raise NotFoundError(f"no fact with id {fact_id}; `locft facts list` shows the ids")
    return row


def _active_with_prompt_key(session: Session, prompt_key: str) -> list[FactRevision]:
    """Active facts whose current prompt normalizes to `prompt_key` (index lookup, then latest check)."""
    candidates = list(session.exec(select(FactRevision.fact_id).where(FactRevision.prompt_key == prompt_key).distinct()))
    if not candidates:
        return []
    return [r for r in _latest_revisions(session, candidates) if not r.retracted and r.prompt_key == prompt_key]


def _promoted_training_set(session: Session) -> dict[int, int]:
    """fact_id -> revision_id the promoted version was trained on."""
    pointer = session.get(PromotedPointer, 1)
    if pointer is None:
        raise StoreError("the store has no promoted version pointer; is it initialized? (`locft init`)")
    rows = session.exec(
        select(FactRevision.fact_id, FactRevision.id)
        .join(VersionFact, col(VersionFact.revision_id) == col(FactRevision.id))
        .where(VersionFact.version_id == pointer.version_id)
    )
    return {fact_id: rev_id for fact_id, rev_id in rows}


def _current_states(session: Session) -> list[tuple[int, int, bool]]:
    """(fact_id, current revision id, retracted) for every fact, without loading the texts."""
    latest = _latest_ids()
    query = (
        select(FactRevision.fact_id, FactRevision.id, FactRevision.retracted)
        .join(latest, col(FactRevision.id) == latest.c.rid)
        .order_by(col(FactRevision.fact_id))
    )
    return [(fact_id, rev_id or 0, bool(retracted)) for fact_id, rev_id, retracted in session.exec(query)]


def _pending_ids(
    session: Session, states: list[tuple[int, int, bool]] | None = None
) -> list[tuple[PendingKind, int, int, int | None]]:
    """(kind, fact_id, current revision id, trained revision id) of every pending fact."""
    trained = _promoted_training_set(session)
    out: list[tuple[PendingKind, int, int, int | None]] = []
    for fact_id, rev_id, retracted in _current_states(session) if states is None else states:
        had = trained.get(fact_id)
        if retracted:
            if had is not None:
                out.append(("retracted", fact_id, rev_id, had))
        elif had is None:
            out.append(("added", fact_id, rev_id, None))
        elif had != rev_id:
            out.append(("revised", fact_id, rev_id, had))
    return out


def _revisions_by_id(session: Session, ids: Sequence[int]) -> dict[int, FactRevision]:
    out: dict[int, FactRevision] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        part = ids[start : start + 500]
        out.update((r.id or 0, r) for r in session.exec(select(FactRevision).where(col(FactRevision.id).in_(part))))
    return out


def _pending(session: Session) -> list[PendingFact]:
    ids = _pending_ids(session)
    rows = _revisions_by_id(session, [rev_id for _, _, rev_id, _ in ids])
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
        tags = _clean_tags(tags)
        prompt_key, answer_key = _keys(fact)
        with self._write() as session:
            matches = _active_with_prompt_key(session, prompt_key)
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
                rev = _new_revision(row.id, 1, fact, source=source, tags=tags, author=author, at=now)
                session.add(rev)
                session.flush()
                append_event(session, ev.FACT_ADDED, actor=author, fact_id=row.id, at=now,
                             payload={"revision_id": rev.id, "prompt": fact.prompt, "answer": fact.answer})
                return AddResult("added", row.id, FactRevisionInfo.of(rev))
            rev = _new_revision(target.fact_id, target.revision + 1, fact, source=source, tags=tags,
                                author=author, note="replaced by add-fact --replace", at=now)
            session.add(rev)
            session.flush()
            append_event(session, ev.FACT_REVISED, actor=author, fact_id=target.fact_id, at=now, payload={
                "revision_id": rev.id, "previous_revision_id": target.id, "answer": fact.answer,
                "previous_answer": target.answer, "via": "replace",
            })
            return AddResult("revised", target.fact_id, FactRevisionInfo.of(rev), previous_answer=target.answer)

    def import_facts(
        self,
        records: Sequence[FactRecord],
        errors: Sequence[RowError] = (),
        *,
        replace: bool = False,
        skip_invalid: bool = False,
        author: str | None = None,
        origin: str | None = None,
        progress: ImportProgress | None = None,
    ) -> ImportSummary:
        """Add many facts in ONE transaction, all-or-nothing unless `skip_invalid`.

        `errors` are rows the reader could not parse; conflicts (with the store or with an
        earlier row of the same file) count as refused too. When anything is refused and not
        `skip_invalid`, nothing is written and `summary.written` is False. Duplicates are never
        refusals. `progress(n)` is called as rows are processed.
        """
        summary = ImportSummary(total=len(records) + len(errors))
        summary.invalid.extend(ImportIssue(e.line, e.message) for e in errors)
        # Validate at the edge even though the readers did: callers may build records by hand.
        checked: list[tuple[FactRecord, EditFact, tuple[str, ...]]] = []
        for record in records:
            try:
                checked.append((record, validate_fact(record.fact), _clean_tags(record.tags)))
            except InvalidFactError as exc:
                summary.invalid.append(ImportIssue(record.line, str(exc)))
        summary.invalid.sort(key=lambda i: i.line)

        # issues that name a fact this import creates: their id is known once written
        refs: list[tuple[list[ImportIssue], int, _Planned, str]] = []
        with self._write() as session:
            plan = _plan_import(session, checked, replace, summary, refs)
            if summary.refused and not skip_invalid:
                summary.added.clear()
                summary.revised.clear()
                return summary  # the transaction commits nothing: no statement wrote
            _write_import(session, plan, author=author, origin=origin, summary=summary, progress=progress)
            summary.written = True
        for issues, i, planned, template in refs:
            issues[i] = ImportIssue(issues[i].line, template.format(ref=_describe(planned)), planned.fact_id)
        return summary

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
            current = _latest_of(session, fact_id)
            if current.retracted:
                raise StoreError(f"fact {fact_id} is retracted; add it again with `locft add-fact`")
            old = _fact_of(current)
            fact = validate_fact(EditFact(
                prompt=old.prompt if prompt is _UNSET else prompt,
                answer=old.answer if answer is _UNSET else answer,
                subject=old.subject if subject is _UNSET else subject,
                paraphrases=old.paraphrases if paraphrases is _UNSET else tuple(paraphrases),
                probes=old.probes if probes is _UNSET else tuple(probes),
            ))
            new_source = current.source if source is _UNSET else source
            new_tags = tuple(current.tags or ()) if tags is _UNSET else _clean_tags(tags)
            if _same_content(current, fact, new_source, new_tags):
                return RevisionResult(False, FactRevisionInfo.of(current))
            prompt_key, _ = _keys(fact)
            if prompt_key != current.prompt_key:
                clash = [m for m in _active_with_prompt_key(session, prompt_key) if m.fact_id != fact_id]
                if clash:
                    raise ConflictError(
                        f"the new prompt {fact.prompt!r} is already fact {clash[0].fact_id} "
                        f"(answer {clash[0].answer!r}); edit or retract that one instead"
                    )
            now = utcnow()
            rev = _new_revision(fact_id, current.revision + 1, fact, source=new_source, tags=new_tags,
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
            current = _latest_of(session, fact_id)
            if current.retracted:
                raise StoreError(f"fact {fact_id} is already retracted")
            now = utcnow()
            tomb = _new_revision(fact_id, current.revision + 1, _fact_of(current), source=current.source,
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
                FactEntry(row.id or 0, row.fact_id, _fact_of(row))
                for row in _latest_revisions(session) if not row.retracted
            ]

    def pending_facts(self) -> list[PendingFact]:
        """Active facts the promoted version lacks (added / revised) and its facts since retracted."""
        with self._read() as session:
            return _pending(session)

    def count_facts(self) -> FactCounts:
        with self._read() as session:
            states = _current_states(session)
            pending = len(_pending_ids(session, states))
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
            latest = _latest_ids()
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
    ids = sorted(_pending_ids(session), key=lambda p: -p[1])
    page: list[tuple[PendingKind, FactRevision]] = []
    skipped = 0
    step = 500 if search else (len(ids) if limit is None else offset + limit)
    for start in range(0, len(ids), max(step, 1)):
        part = ids[start : start + max(step, 1)]
        rows = _revisions_by_id(session, [rev_id for _, _, rev_id, _ in part])
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
    created = dict(session.exec(select(Fact.id, Fact.created_at).where(col(Fact.id).in_(fact_ids))).all()) if fact_ids else {}
    return [
        FactInfo(
            fact_id=row.fact_id, status="retracted" if row.retracted else "active", current=FactRevisionInfo.of(row),
            revisions=counts.get(row.fact_id, 1), created_at=aware(created[row.fact_id]) or created[row.fact_id],
            pending=kind,
        )
        for kind, row in page
    ]


def _clean_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidFactError(f"tag {tag!r} is empty or not a string")
        if any(ord(ch) < 32 for ch in tag) or len(tag) > 100:
            raise InvalidFactError(f"tag {tag[:40]!r} has control characters or is over 100 characters")
        if tag.strip() not in out:
            out.append(tag.strip())
    return tuple(out)


@dataclass
class _Planned:
    """One row of an import that will write a revision."""

    line: int
    fact: EditFact
    source: str | None
    tags: tuple[str, ...]
    fact_id: int | None  # an existing fact to revise; None: new fact
    new_index: int | None  # for a revision of a fact this same import creates
    number: int  # revision number
    previous: FactRevision | None = None
    revision_id: int | None = None  # once written


def _plan_import(
    session: Session,
    checked: Sequence[tuple[FactRecord, EditFact, tuple[str, ...]]],
    replace: bool,
    summary: ImportSummary,
    refs: list[tuple[list[ImportIssue], int, _Planned, str]],
) -> list[_Planned]:
    """Decide per row: new fact, revision (replace), duplicate, or conflict. Nothing is written."""
    # prompt_key -> the current state of that question: (existing row | planned row)
    index: dict[str, list[FactRevision | _Planned]] = {}
    for row in _latest_revisions(session):
        if not row.retracted:
            index.setdefault(row.prompt_key, []).append(row)
    plan: list[_Planned] = []
    new_count = 0
    for record, fact, tags in checked:
        prompt_key, answer_key = _keys(fact)
        matches = index.get(prompt_key, [])
        same = [m for m in matches if _answer_key(m) == answer_key]
        other = [m for m in matches if _answer_key(m) != answer_key]
        if same:
            m = same[0]
            if isinstance(m, _Planned):  # its id exists only once written
                refs.append((summary.duplicates, len(summary.duplicates), m, "duplicate of {ref}"))
            summary.duplicates.append(ImportIssue(record.line, f"duplicate of {_describe(m)}", _fact_id(m)))
            continue
        if other and not replace:
            m = other[0]
            template = f"{fact.prompt!r} conflicts with {{ref}}, which answers {_answer(m)!r}; use --replace to revise it"
            if isinstance(m, _Planned):
                refs.append((summary.conflicts, len(summary.conflicts), m, template))
            summary.conflicts.append(ImportIssue(record.line, template.format(ref=_describe(m)), _fact_id(m)))
            continue
        if other:  # replace: a new revision of the conflicting fact
            m = other[0]
            if isinstance(m, FactRevision):
                planned = _Planned(record.line, fact, record.source, tags, m.fact_id, None, m.revision + 1, previous=m)
            else:
                planned = _Planned(record.line, fact, record.source, tags, m.fact_id, m.new_index, m.number + 1)
            summary.revised.append(ImportIssue(record.line, f"revises {_describe(m)}", _fact_id(m)))
            matches.remove(m)
        else:
            planned = _Planned(record.line, fact, record.source, tags, None, new_count, 1)
            new_count += 1
        plan.append(planned)
        index.setdefault(prompt_key, []).append(planned)
    return plan


def _answer_key(m: FactRevision | _Planned) -> str:
    return m.answer_key if isinstance(m, FactRevision) else normalize_answer(m.fact.answer)


def _answer(m: FactRevision | _Planned) -> str:
    return m.answer if isinstance(m, FactRevision) else m.fact.answer


def _fact_id(m: FactRevision | _Planned) -> int | None:
    return m.fact_id


def _describe(m: FactRevision | _Planned) -> str:
    if isinstance(m, FactRevision):
        return f"fact {m.fact_id}"
    if m.fact_id is not None and m.revision_id is not None:  # written by this import
        return f"fact {m.fact_id} (line {m.line})"
    return f"line {m.line} of this file"


def _write_import(
    session: Session,
    plan: list[_Planned],
    *,
    author: str | None,
    origin: str | None,
    summary: ImportSummary,
    progress: ImportProgress | None,
) -> None:
    """Bulk INSERTs (Core, not one ORM object per row: 5x faster, and the write lock is held
    for less time). Ids come back in parameter order from INSERT .. RETURNING."""
    now = utcnow()
    new_count = sum(1 for p in plan if p.fact_id is None and p.number == 1)
    new_ids: list[int] = []
    if new_count:
        result = session.execute(
            sa.insert(Fact).returning(col(Fact.id), sort_by_parameter_order=True), [{"created_at": now}] * new_count
        )
        new_ids = [row[0] for row in result]
    chunk = 1000
    for start in range(0, len(plan), chunk):
        part = plan[start : start + chunk]
        values = []
        for p in part:
            if p.fact_id is None:  # new fact, or a revision of a fact this import created
                assert p.new_index is not None
                p.fact_id = new_ids[p.new_index]
            note = "replaced by import --replace" if p.number > 1 else None
            values.append(_revision_values(p.fact_id, p.number, p.fact, source=p.source, tags=p.tags, author=author,
                                           note=note, at=now))
        result = session.execute(
            sa.insert(FactRevision).returning(col(FactRevision.id), sort_by_parameter_order=True), values
        )
        for p, row in zip(part, result):
            p.revision_id = row[0]
        events = []
        for p in part:
            added = p.number == 1
            payload: dict[str, Any] = {"revision_id": p.revision_id, "answer": p.fact.answer, "import": origin,
                                       "line": p.line}
            payload.update({"prompt": p.fact.prompt} if added else {"via": "import --replace"})
            events.append({"created_at": now, "kind": ev.FACT_ADDED if added else ev.FACT_REVISED, "actor": author,
                           "fact_id": p.fact_id, "version_id": None, "round_id": None, "payload": payload})
        session.execute(sa.insert(Event), events)
        if progress is not None:
            progress(start + len(part))
    summary.added = [
        ImportIssue(p.line, f"added as fact {p.fact_id}", p.fact_id) for p in plan if p.number == 1
    ]
    summary.revised = [ImportIssue(p.line, f"revised fact {p.fact_id}", p.fact_id) for p in plan if p.number > 1]
    append_event(session, ev.FACTS_IMPORTED, actor=author, at=now, payload={
        "import": origin, "total": summary.total, "added": len(summary.added), "revised": len(summary.revised),
        "duplicates": len(summary.duplicates), "skipped": summary.refused,
    })
