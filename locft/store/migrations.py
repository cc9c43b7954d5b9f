"""Named, append-only schema migrations, recorded in the `schema_migration` table.

Rules: never edit or reorder a migration that has shipped; add a new one at the end. Each
migration describes its tables with its own frozen SQLAlchemy Core definitions (not the ORM
models, which follow the newest schema), so that running only the first N migrations gives
exactly the schema that store had. tests/store/test_migrations.py checks that the full chain
matches models.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# The bookkeeping table itself: created before the first migration, never changed.
_SCHEMA_MD = sa.MetaData()
SCHEMA_TABLE = sa.Table(
    "schema_migration", _SCHEMA_MD,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def _0001_initial(conn: Connection) -> None:
    """Facts and their revisions, versions, gate results, the promoted pointer, the audit log;
    seeds version 0 (the base model) as the promoted version."""
    md = sa.MetaData()
    sa.Table(
        "fact", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "fact_revision", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("fact_id", sa.Integer, sa.ForeignKey("fact.id"), nullable=False, index=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("retracted", sa.Boolean, nullable=False),
        sa.Column("prompt", sa.String, nullable=False),
        sa.Column("prompt_key", sa.String, nullable=False),
        sa.Column("answer", sa.String, nullable=False),
        sa.Column("answer_key", sa.String, nullable=False),
        sa.Column("subject", sa.String),
        sa.Column("paraphrases", sa.JSON, nullable=False),
        sa.Column("probes", sa.JSON, nullable=False),
        sa.Column("source", sa.String),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("author", sa.String),
        sa.Column("note", sa.String),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("fact_id", "revision", name="uq_fact_revision_number"),
        sa.Index("ix_fact_revision_prompt_key", "prompt_key"),
    )
    version = sa.Table(
        "version", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("version.id")),
        sa.Column("base_fingerprint", sa.String),
        sa.Column("edit_config", sa.JSON, nullable=False),
        sa.Column("fact_count", sa.Integer, nullable=False),
        sa.Column("fact_set_digest", sa.String, nullable=False),
        sa.Column("snapshot_path", sa.String),
        sa.Column("snapshot_sha256", sa.String),
        sa.Column("snapshot_size", sa.Integer),
        sa.Column("round_id", sa.Integer),
        sa.Column("note", sa.String),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "version_fact", md,
        sa.Column("version_id", sa.Integer, sa.ForeignKey("version.id"), primary_key=True),
        sa.Column("revision_id", sa.Integer, sa.ForeignKey("fact_revision.id"), primary_key=True),
    )
    sa.Table(
        "gate_result", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("version.id"), nullable=False, index=True),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("round_id", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    promotion = sa.Table(
        "promotion", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("version.id"), nullable=False),
        sa.Column("previous_version_id", sa.Integer),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("actor", sa.String),
        sa.Column("reason", sa.String),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    pointer = sa.Table(
        "promoted_pointer", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("version.id"), nullable=False),
        sa.Column("promotion_id", sa.Integer, sa.ForeignKey("promotion.id"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    event = sa.Table(
        "event", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("kind", sa.String, nullable=False, index=True),
        sa.Column("actor", sa.String),
        sa.Column("fact_id", sa.Integer, index=True),
        sa.Column("version_id", sa.Integer),
        sa.Column("round_id", sa.Integer),
        sa.Column("payload", sa.JSON, nullable=False),
    )
    md.create_all(conn)

    now = _utcnow()
    from locft.facts import fact_set_digest

    conn.execute(version.insert().values(
        id=0, parent_id=None, base_fingerprint=None, edit_config={}, fact_count=0,
        fact_set_digest=fact_set_digest([]), note="the base model", created_at=now,
    ))
    inserted = conn.execute(promotion.insert().values(
        version_id=0, previous_version_id=None, action="init", forced=False, actor="locft",
        reason="new store: the base model is served", created_at=now,
    )).inserted_primary_key
    assert inserted is not None  # a single-row INSERT always reports its key
    promotion_id = inserted[0]
    conn.execute(pointer.insert().values(id=1, version_id=0, promotion_id=promotion_id, updated_at=now))
    conn.execute(event.insert().values(
        created_at=now, kind="store.created", actor="locft", version_id=0, payload={},
    ))


def _0002_rounds(conn: Connection) -> None:
    """Training rounds and explicit round requests (the daemon's bookkeeping)."""
    md = sa.MetaData()
    sa.Table(
        "round", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("trigger", sa.String, nullable=False),
        sa.Column("actor", sa.String),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("version_id", sa.Integer),
        sa.Column("error", sa.String),
        sa.Column("timings", sa.JSON),
        sa.Column("loss_history", sa.JSON),
    )
    sa.Table(
        "round_request", md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String),
        sa.Column("reason", sa.String),
        sa.Column("claimed_at", sa.DateTime(timezone=True), index=True),
        sa.Column("round_id", sa.Integer),
    )
    md.create_all(conn)


# Tables whose rows are never updated nor deleted, and the one exception (version 0's
# fingerprint, unknown until the first round loads the base model).
_APPEND_ONLY = ("fact", "fact_revision", "version_fact", "gate_result", "promotion", "event")
_VERSION_COLUMNS_FROZEN = (
    "id", "parent_id", "edit_config", "fact_count", "fact_set_digest", "snapshot_path",
    "snapshot_sha256", "snapshot_size", "round_id", "note", "created_at",
)


def _0003_append_only_triggers(conn: Connection) -> None:
    """SQLite triggers that make the append-only tables refuse UPDATE and DELETE (a bug or a
    hand-edit cannot rewrite history). PostgreSQL gets the same in 0004."""
    if conn.dialect.name != "sqlite":
        log.info("append-only triggers are SQLite-only; skipped on %s", conn.dialect.name)
        return
    for table in _APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} rows are append-only'); END"
            )
    conn.exec_driver_sql(
        "CREATE TRIGGER version_no_delete BEFORE DELETE ON version "
        "BEGIN SELECT RAISE(ABORT, 'versions are never deleted'); END"
    )
    conn.exec_driver_sql(
        f"CREATE TRIGGER version_frozen BEFORE UPDATE OF {', '.join(_VERSION_COLUMNS_FROZEN)} ON version "
        "BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END"
    )
    conn.exec_driver_sql(
        "CREATE TRIGGER version_fingerprint_once BEFORE UPDATE OF base_fingerprint ON version "
        "WHEN OLD.base_fingerprint IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'a recorded base fingerprint never changes'); END"
    )


def _0004_postgres_append_only_triggers(conn: Connection) -> None:
    """0003's rules on PostgreSQL (0003 made them on SQLite only): the append-only tables refuse
    UPDATE and DELETE, a version's recorded columns and fingerprint never change. SQLite: nothing
    to do. The message is the trigger's argument, the same words as on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(
        "CREATE FUNCTION locft_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION '%%', TG_ARGV[0]; END $$"  # %% : the driver's placeholder escape
    )

    def refuse(name: str, when: str, message: str, condition: str = "") -> None:
        conn.exec_driver_sql(
            f"CREATE TRIGGER {name} BEFORE {when} FOR EACH ROW {condition} "
            f"EXECUTE FUNCTION locft_refuse('{message}')"
        )

    for table in _APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            refuse(f"{table}_no_{op.lower()}", f"{op} ON {table}", f"{table} rows are append-only")
    refuse("version_no_delete", "DELETE ON version", "versions are never deleted")
    refuse("version_frozen", f"UPDATE OF {', '.join(_VERSION_COLUMNS_FROZEN)} ON version", "versions are immutable")
    refuse("version_fingerprint_once", "UPDATE OF base_fingerprint ON version",
           "a recorded base fingerprint never changes", "WHEN (OLD.base_fingerprint IS NOT NULL)")


def _0005_candidate_round_outcome(conn: Connection) -> None:
    """A round whose version passed its gates and waits for manual promotion now ends as
    'candidate'. Before, such rounds were stored as 'skipped' with their version: a round that
    really skipped (nothing to train) never records a version, so the version tells them apart.
    Their note (the promote hint) stays; their round.finished events are history and stay too."""
    rounds = sa.table("round", sa.column("outcome", sa.String), sa.column("version_id", sa.Integer))
    conn.execute(rounds.update()
                 .where(rounds.c.outcome == "skipped", rounds.c.version_id.is_not(None))
                 .values(outcome="candidate"))


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", _0001_initial),
    Migration("0002_rounds", _0002_rounds),
    Migration("0003_append_only_triggers", _0003_append_only_triggers),
    Migration("0004_postgres_append_only_triggers", _0004_postgres_append_only_triggers),
    Migration("0005_candidate_round_outcome", _0005_candidate_round_outcome),
)
