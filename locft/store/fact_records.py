"""Facts as the store hands them out: revisions, current states, add and revise results, pending changes.

Plain frozen dataclasses, detached from the database (nothing here holds a session).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from locft.facts import EditFact, Probe
from locft.store.db import aware
from locft.store.models import FactRevision

FactStatus = Literal["active", "retracted"]
FactFilter = Literal["all", "active", "pending", "retracted"]
PendingKind = Literal["added", "revised", "retracted"]


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
    def of(cls, row: FactRevision) -> FactRevisionInfo:
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
