"""The store's tables, as SQLModel classes (the ORM view; migrations.py creates them).

Append-only by design: facts change by new FactRevision rows, versions are written once,
gate outcomes and promotions are appended. The only rows updated in place are the promoted
pointer (one row), rounds (finished when they end) and round requests (claimed).
Timestamps are aware UTC datetimes (SQLModel's UTCDateTime; SQLite stores them without offset).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def _json(nullable: bool = False) -> Any:
    """A JSON column (SQLModel has no type mapping for dict/list fields)."""
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migration"

    name: str = Field(primary_key=True)
    applied_at: datetime


class Fact(SQLModel, table=True):
    """A fact's stable identity; everything else lives in its revisions."""

    __tablename__ = "fact"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime


class FactRevision(SQLModel, table=True):
    """One state of a fact. The newest revision of a fact is its current state; a tombstone
    (retracted=True) repeats the content it retracts so that history reads on its own."""

    __tablename__ = "fact_revision"
    __table_args__ = (
        UniqueConstraint("fact_id", "revision", name="uq_fact_revision_number"),
        Index("ix_fact_revision_prompt_key", "prompt_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    fact_id: int = Field(foreign_key="fact.id", index=True)
    revision: int  # 1, 2, ... per fact; the unique constraint turns a lost race into an error
    retracted: bool = False
    prompt: str
    prompt_key: str  # locft.text.normalize_prompt(prompt): "the same question"
    answer: str
    answer_key: str  # locft.text.normalize_answer(answer): "the same answer"
    subject: str | None = None
    paraphrases: list[str] = _json()
    probes: list[dict[str, Any]] = _json()
    source: str | None = None
    tags: list[str] = _json()
    author: str | None = None
    note: str | None = None
    created_at: datetime


class Version(SQLModel, table=True):
    """An immutable model version: base + one snapshot, trained on an exact set of revisions.

    Version 0 is the base model (no snapshot). Only version 0's base_fingerprint may be filled
    in once, when the first round learns it; SQLite triggers refuse any other update.
    """

    __tablename__ = "version"

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int | None = Field(default=None, foreign_key="version.id")
    base_fingerprint: str | None = None
    edit_config: dict[str, Any] = _json()
    fact_count: int = 0
    fact_set_digest: str
    snapshot_path: str | None = None  # relative to $LOCFT_HOME
    snapshot_sha256: str | None = None  # of tensors.safetensors
    snapshot_size: int | None = None  # bytes of tensors.safetensors
    round_id: int | None = None  # the round that built it (None: recorded by hand)
    note: str | None = None
    created_at: datetime


class VersionFact(SQLModel, table=True):
    """Which fact revisions a version was trained on."""

    __tablename__ = "version_fact"

    version_id: int = Field(foreign_key="version.id", primary_key=True)
    revision_id: int = Field(foreign_key="fact_revision.id", primary_key=True)


class GateResult(SQLModel, table=True):
    """One gate evaluation of a version (append-only; the newest one counts)."""

    __tablename__ = "gate_result"

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="version.id", index=True)
    passed: bool
    metrics: dict[str, Any] = _json()
    report: dict[str, Any] = _json()
    round_id: int | None = None
    created_at: datetime


class Promotion(SQLModel, table=True):
    """Every move of the promoted pointer, in order (action: init / promote / rollback)."""

    __tablename__ = "promotion"

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="version.id")
    previous_version_id: int | None = None
    action: str
    forced: bool = False
    actor: str | None = None
    reason: str | None = None
    created_at: datetime


class PromotedPointer(SQLModel, table=True):
    """Exactly one row (id=1): the version being served."""

    __tablename__ = "promoted_pointer"

    id: int = Field(default=1, primary_key=True)
    version_id: int = Field(foreign_key="version.id")
    promotion_id: int = Field(foreign_key="promotion.id")
    updated_at: datetime


class Event(SQLModel, table=True):
    """The audit log: what happened, who did it, to what."""

    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(index=True)
    kind: str = Field(index=True)  # e.g. fact.added, version.promoted, round.finished
    actor: str | None = None
    fact_id: int | None = Field(default=None, index=True)
    version_id: int | None = None
    round_id: int | None = None
    payload: dict[str, Any] = _json()


class Round(SQLModel, table=True):
    """One training round: started, then finished with an outcome."""

    __tablename__ = "round"

    id: int | None = Field(default=None, primary_key=True)
    trigger: str  # cron / pending / request / manual
    actor: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = "running"  # running / promoted / candidate / rejected / skipped / failed / interrupted
    version_id: int | None = None
    error: str | None = None
    timings: dict[str, Any] | None = _json(nullable=True)
    loss_history: list[Any] | None = _json(nullable=True)


class RoundRequest(SQLModel, table=True):
    """An explicit ask for a round (`locft round request`, the API); claimed by the daemon."""

    __tablename__ = "round_request"

    id: int | None = Field(default=None, primary_key=True)
    requested_at: datetime
    actor: str | None = None
    reason: str | None = None
    claimed_at: datetime | None = Field(default=None, index=True)
    round_id: int | None = None
