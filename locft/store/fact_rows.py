"""Fact revision rows inside a session: building them from an EditFact, and the queries every
fact operation shares (the newest revision of each fact, the promoted version's training set,
what is pending since)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from locft.errors import InvalidFactError, NotFoundError, StoreError
from locft.facts import EditFact, Probe
from locft.store.db import utcnow
from locft.store.fact_records import PendingKind
from locft.store.models import FactRevision, PromotedPointer, VersionFact
from locft.text import normalize_answer, normalize_prompt


def fact_keys(fact: EditFact) -> tuple[str, str]:
    return normalize_prompt(fact.prompt), normalize_answer(fact.answer)


def same_content(row: FactRevision, fact: EditFact, source: str | None, tags: Sequence[str]) -> bool:
    return (
        row.prompt == fact.prompt and row.answer == fact.answer and row.subject == fact.subject
        and tuple(row.paraphrases or ()) == fact.paraphrases
        and [dict(p) for p in row.probes or ()] == [p.to_dict() for p in fact.probes]
        and row.source == source and tuple(row.tags or ()) == tuple(tags)
    )


def revision_values(
    fact_id: int, number: int, fact: EditFact, *, source: str | None, tags: Sequence[str],
    author: str | None, note: str | None = None, retracted: bool = False, at: datetime | None = None,
) -> dict[str, Any]:
    prompt_key, answer_key = fact_keys(fact)
    return dict(
        fact_id=fact_id, revision=number, retracted=retracted, prompt=fact.prompt, prompt_key=prompt_key,
        answer=fact.answer, answer_key=answer_key, subject=fact.subject, paraphrases=list(fact.paraphrases),
        probes=[p.to_dict() for p in fact.probes], source=source, tags=list(tags), author=author, note=note,
        created_at=at or utcnow(),
    )


def new_revision(
    fact_id: int, number: int, fact: EditFact, *, source: str | None, tags: Sequence[str],
    author: str | None, note: str | None = None, retracted: bool = False, at: datetime | None = None,
) -> FactRevision:
    return FactRevision(**revision_values(fact_id, number, fact, source=source, tags=tags, author=author,
                                          note=note, retracted=retracted, at=at))


def fact_of(row: FactRevision) -> EditFact:
    return EditFact(
        row.prompt, row.answer, row.subject, tuple(row.paraphrases or ()),
        tuple(Probe(p["prompt"], p.get("answer")) for p in row.probes or ()), str(row.fact_id),
    )


def latest_ids(fact_ids: Sequence[int] | None = None) -> Any:
    """Subquery: the newest revision id of every fact, or of `fact_ids` (revision ids only grow)."""
    query = select(FactRevision.fact_id, sa.func.max(FactRevision.id).label("rid"))
    if fact_ids is not None:
        query = query.where(col(FactRevision.fact_id).in_(list(fact_ids)))
    return query.group_by(col(FactRevision.fact_id)).subquery()


def latest_revisions(session: Session, fact_ids: Sequence[int] | None = None) -> list[FactRevision]:
    latest = latest_ids(fact_ids)
    query = select(FactRevision).join(latest, col(FactRevision.id) == latest.c.rid)
    return list(session.exec(query.order_by(col(FactRevision.fact_id))))


def latest_of(session: Session, fact_id: int) -> FactRevision:
    row = session.exec(
        select(FactRevision).where(FactRevision.fact_id == fact_id).order_by(sa.desc(col(FactRevision.id))).limit(1)
    ).first()
    if row is None:
        raise NotFoundError(f"no fact with id {fact_id}; `locft facts list` shows the ids")
    return row


def active_with_prompt_key(session: Session, prompt_key: str) -> list[FactRevision]:
    """Active facts whose current prompt normalizes to `prompt_key` (index lookup, then latest check)."""
    candidates = list(session.exec(
        select(FactRevision.fact_id).where(FactRevision.prompt_key == prompt_key).distinct()
    ))
    if not candidates:
        return []
    return [r for r in latest_revisions(session, candidates) if not r.retracted and r.prompt_key == prompt_key]


def promoted_training_set(session: Session) -> dict[int, int]:
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


def current_states(session: Session) -> list[tuple[int, int, bool]]:
    """(fact_id, current revision id, retracted) for every fact, without loading the texts."""
    latest = latest_ids()
    query = (
        select(FactRevision.fact_id, FactRevision.id, FactRevision.retracted)
        .join(latest, col(FactRevision.id) == latest.c.rid)
        .order_by(col(FactRevision.fact_id))
    )
    return [(fact_id, rev_id or 0, bool(retracted)) for fact_id, rev_id, retracted in session.exec(query)]


def pending_ids(
    session: Session, states: list[tuple[int, int, bool]] | None = None
) -> list[tuple[PendingKind, int, int, int | None]]:
    """(kind, fact_id, current revision id, trained revision id) of every pending fact."""
    trained = promoted_training_set(session)
    out: list[tuple[PendingKind, int, int, int | None]] = []
    for fact_id, rev_id, retracted in current_states(session) if states is None else states:
        had = trained.get(fact_id)
        if retracted:
            if had is not None:
                out.append(("retracted", fact_id, rev_id, had))
        elif had is None:
            out.append(("added", fact_id, rev_id, None))
        elif had != rev_id:
            out.append(("revised", fact_id, rev_id, had))
    return out


def revisions_by_id(session: Session, ids: Sequence[int]) -> dict[int, FactRevision]:
    out: dict[int, FactRevision] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        part = ids[start : start + 500]
        out.update((r.id or 0, r) for r in session.exec(select(FactRevision).where(col(FactRevision.id).in_(part))))
    return out


def clean_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidFactError(f"tag {tag!r} is empty or not a string")
        if any(ord(ch) < 32 for ch in tag) or len(tag) > 100:
            raise InvalidFactError(f"tag {tag[:40]!r} has control characters or is over 100 characters")
        if tag.strip() not in out:
            out.append(tag.strip())
    return tuple(out)
