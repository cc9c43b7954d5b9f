from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from locft.config import StoreConfig, load_config
from locft.errors import StoreError
from locft.facts import EditFact
from locft.home import Home
from locft.store import Store
from locft.store import db as store_db
from locft.store.migrations import MIGRATIONS, Migration
from tests.store.conftest import postgres_database


def columns(engine: sa.Engine) -> dict[str, dict[str, bool]]:
    inspector = sa.inspect(engine)
    return {t: {c["name"]: c["nullable"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


def url_of(home: Home) -> str:
    return store_db.database_url(home, load_config(home.root).store)


@contextlib.contextmanager
def reference_engine(backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database on the same backend, for the models' own schema."""
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'reference.db'}" if backend == "sqlite"
               else stack.enter_context(postgres_database()))
        engine = sa.create_engine(url)
        stack.callback(engine.dispose)
        yield engine


def test_the_migration_chain_builds_exactly_the_models_schema(store: Store, backend: str, tmp_path: Path) -> None:
    with reference_engine(backend, tmp_path) as reference:
        SQLModel.metadata.create_all(reference)
        assert columns(store._engine) == columns(reference)
        tables = SQLModel.metadata.tables
        indexes = {t: {i["name"] for i in sa.inspect(store._engine).get_indexes(t)} for t in tables}
        expected = {t: {i["name"] for i in sa.inspect(reference).get_indexes(t)} for t in tables}
        assert indexes == expected


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store: Store) -> None:
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_opening_an_older_store_migrates_it_and_keeps_its_data(home: Home) -> None:
    url = url_of(home)
    engine = store_db.create_db_engine(url)
    assert store_db.migrate(engine, url, upto=1) == ["0001_initial"]
    with engine.begin() as conn:  # data written by the old schema (id 1: the first of a new table)
        conn.exec_driver_sql("INSERT INTO fact (created_at) VALUES ('2024-01-01 00:00:00')")
        conn.exec_driver_sql(
            "INSERT INTO fact_revision (fact_id, revision, retracted, prompt, prompt_key, answer, answer_key, "
            "paraphrases, probes, tags, created_at) "
            "VALUES (1, 1, FALSE, 'Old?', 'old', 'Yes', 'yes', '[]', '[]', '[]', "
            "'2024-01-01 00:00:00')"
        )
    assert "round" not in sa.inspect(engine).get_table_names()
    engine.dispose()

    with Store.open(home) as store:
        assert store.applied_migrations == tuple(m.name for m in MIGRATIONS[1:])
        assert [e.fact.prompt for e in store.active_facts()] == ["Old?"]
        assert store.start_round("manual").outcome == "running"  # the new tables work
        store.add_fact(EditFact("New?", "fact"))
    with Store.open(home) as store:
        assert store.applied_migrations == ()  # nothing left to do
        assert len(store.active_facts()) == 2


def test_rounds_stored_as_skipped_with_a_version_become_candidates(home: Home) -> None:
    """Before 0005 a round whose version waited for manual promotion was stored as 'skipped'."""
    url = url_of(home)
    engine = store_db.create_db_engine(url)
    upto = [m.name for m in MIGRATIONS].index("0005_candidate_round_outcome")
    store_db.migrate(engine, url, upto=upto)
    waits = "gates passed; version 0 waits for `locft promote 0`"
    with engine.begin() as conn:  # the old code's rows: a candidate, a real skip, a rejection, one still running
        for outcome, version_id, error in (("skipped", 0, waits), ("skipped", None, "no change since version 0"),
                                           ("rejected", 0, "rejected: reliability"), ("running", None, None)):
            conn.execute(sa.text(
                "INSERT INTO round (trigger, started_at, outcome, version_id, error) "
                "VALUES ('manual', '2024-01-01 00:00:00', :outcome, :version_id, :error)"
            ), {"outcome": outcome, "version_id": version_id, "error": error})
    engine.dispose()

    with Store.open(home) as store:
        assert store.applied_migrations == (("0005_candidate_round_outcome",)
                                            + tuple(m.name for m in MIGRATIONS[upto + 1:]))
        rounds = [(r.outcome, r.version_id, r.error) for r in reversed(store.list_rounds())]
        assert rounds == [("candidate", 0, waits), ("skipped", None, "no change since version 0"),
                          ("rejected", 0, "rejected: reliability"), ("running", None, None)]
        assert store.finish_round(4, "candidate", version_id=0).outcome == "candidate"


def test_a_newer_store_is_refused_with_a_clear_message(store: Store, home: Home) -> None:
    with store._engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO schema_migration (name, applied_at) VALUES ('0099_from_the_future', '2030-01-01 00:00:00')"
        )
    store.close()
    with pytest.raises(StoreError, match=r"newer locft.*0099_from_the_future.*upgrade locft"):
        Store.open(home)


def test_a_failing_migration_applies_nothing(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    Store.open(home, create=True).close()

    def broken(conn: sa.Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_db, "MIGRATIONS", MIGRATIONS + (Migration("0004_broken", broken),))
    with pytest.raises(RuntimeError, match="disk on fire"):
        Store.open(home)
    engine = sa.create_engine(store_db.engine_url(url_of(home)))
    assert "half_done" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM schema_migration")]
    assert "0004_broken" not in names and len(names) == len(MIGRATIONS)


@pytest.mark.sqlite_only  # a configured database URL is created on first open; the default file is not
def test_a_missing_store_says_to_run_init(home: Home) -> None:
    with pytest.raises(StoreError, match="locft init"):
        Store.open(home)
    assert not home.db_path.exists()


@pytest.mark.sqlite_only
def test_the_database_url_is_configurable(home: Home, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.db"
    with Store.open(home, StoreConfig(database_url=f"sqlite:///{other}"), create=True) as store:
        store.add_fact(EditFact("Q?", "A"))
    assert other.exists() and not home.db_path.exists()
    with pytest.raises(StoreError, match="not a database URL"):
        Store.open(home, StoreConfig(database_url="not a url"))


@pytest.mark.sqlite_only
def test_write_transactions_take_the_write_lock_at_begin(store: Store, home: Home) -> None:
    """A write that starts by reading must not be able to lose the race for the lock later
    (SQLite would then fail at once instead of waiting): BEGIN IMMEDIATE."""
    import sqlite3

    other = sqlite3.connect(home.db_path, timeout=0, isolation_level=None)
    try:
        with store._read() as session:
            session.exec(sa.text("SELECT 1 FROM fact LIMIT 1")).all()  # type: ignore[call-overload]
            other.execute("BEGIN IMMEDIATE")  # a reader does not block a writer
            other.execute("ROLLBACK")
        with store._write() as session:
            session.exec(sa.text("SELECT 1 FROM fact LIMIT 1")).all()  # type: ignore[call-overload]
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
