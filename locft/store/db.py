"""Database plumbing: the engine (SQLite in WAL mode), migrations, transactions, timestamps.

Why BEGIN IMMEDIATE for writes: a SQLite transaction that starts by reading and later writes
gets SQLITE_BUSY at once (the busy timeout is not consulted) when another writer committed in
between. Taking the write lock at BEGIN makes concurrent writers queue on the busy timeout
instead, so the CLI and the daemon never surface "database is locked".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from locft.config import StoreConfig
from locft.errors import NotFoundError, StoreError
from locft.home import Home
from locft.store.migrations import MIGRATIONS, SCHEMA_TABLE

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
MAX_INT = 2**63 - 1  # SQLite integers are 64-bit: no id, limit or offset is larger


def clamp_count(n: int | None) -> int | None:
    """A limit or offset as the database can take it (a larger one means "all" anyway)."""
    return None if n is None else max(0, min(int(n), MAX_INT))
_BEGIN_OPTION = "locft_sqlite_begin"


def utcnow() -> datetime:
    """Aware UTC (SQLModel's datetime columns refuse naive values; SQLite stores them as UTC)."""
    return datetime.now(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def to_utc(value: datetime) -> datetime:
    """A caller's datetime for comparing with stored ones (naive input is taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def database_url(home: Home, config: StoreConfig) -> str:
    return config.database_url or home.default_database_url()


def safe_url(url: str) -> str:
    """The URL for display: passwords hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - display only
        return "<unparseable database URL>"


# The driver each backend's extra installs (pyproject: `pip install 'locft[postgres]'`).
_EXTRA = {"postgresql": "postgres"}


def engine_url(url: str) -> sa.URL:
    """The URL as the engine takes it. A driver-less `postgresql://` means psycopg 3, the driver
    the `postgres` extra installs (SQLAlchemy's own default there is psycopg2)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"store.database_url {safe_url(url)!r} is not a database URL: {exc}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def driver_problem(url: str) -> str | None:
    """Why no engine can be made for `url` (not a URL, unknown backend, driver not installed), or
    None. Imports the driver, connects to nothing."""
    try:
        parsed = engine_url(url)
        dialect = parsed.get_dialect()
    except StoreError as exc:
        return str(exc)
    except (sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as exc:
        return f"{safe_url(url)!r}: unknown database backend ({exc})"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        extra = _EXTRA.get(parsed.get_backend_name())
        fix = f"pip install 'locft[{extra}]'" if extra else f"install the {parsed.drivername} driver"
        return f"the database driver for {parsed.drivername} is not installed ({exc.name or exc}): {fix}"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parent = Path(parsed.database).expanduser().parent
        if not parent.is_dir():
            return f"the directory of the SQLite database {parsed.database} does not exist (`locft init` creates it)"
    return None


def create_db_engine(url: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine; for SQLite: WAL, synchronous=NORMAL, busy timeout, foreign keys, own BEGIN."""
    parsed = engine_url(url)
    if parsed.get_backend_name() != "sqlite":
        why = driver_problem(url)  # before SQLAlchemy's own ModuleNotFoundError for a missing driver
        if why:
            raise StoreError(why)
        return sa.create_engine(parsed, pool_pre_ping=True)

    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN would be DEFERRED; we emit ours
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode except on power loss
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(_BEGIN_OPTION, 'DEFERRED')}")

    return engine


def writer_engine(engine: Engine) -> Engine:
    """The same pool, but transactions take the write lock at BEGIN (SQLite)."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def _applied_migrations(conn: sa.Connection) -> list[str]:
    if not sa.inspect(conn).has_table("schema_migration"):
        return []
    return [row[0] for row in conn.execute(sa.select(SCHEMA_TABLE.c.name).order_by(SCHEMA_TABLE.c.name))]


def _check_not_newer(applied: list[str], url: str) -> None:
    known = {m.name for m in MIGRATIONS}
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise StoreError(
            f"the store at {safe_url(url)} was written by a newer locft (unknown schema migration(s): "
            f"{', '.join(unknown)}); upgrade locft to open it"
        )


def migrate(engine: Engine, url: str, upto: int | None = None) -> list[str]:
    """Apply the migrations this store lacks (the first `upto` only, for tests); returns their names.

    Refuses a store that has migrations this code does not know (a newer locft wrote it).
    """
    wanted = MIGRATIONS if upto is None else MIGRATIONS[:upto]
    try:
        with engine.connect() as conn:
            applied = _applied_migrations(conn)
        _check_not_newer(applied, url)
        if all(m.name in applied for m in wanted):
            return []
        with writer_engine(engine).begin() as conn:  # one transaction: all or none (DDL included)
            applied = _applied_migrations(conn)  # another process may have migrated meanwhile
            _check_not_newer(applied, url)
            SCHEMA_TABLE.create(conn, checkfirst=True)
            done: list[str] = []
            for migration in wanted:
                if migration.name in applied:
                    continue
                log.info("applying schema migration %s", migration.name)
                migration.apply(conn)
                conn.execute(SCHEMA_TABLE.insert().values(name=migration.name, applied_at=utcnow()))
                done.append(migration.name)
            return done
    except DBAPIError as exc:  # not a database, unreadable, locked for over the busy timeout...
        raise StoreError(f"cannot open the store at {safe_url(url)}: {exc.orig}") from None


class StoreBase:
    """Holds the engine; the mixins in facts.py, versions.py, ... add the operations."""

    def __init__(self, home: Home, config: StoreConfig, engine: Engine, url: str) -> None:
        self.home = home
        self.config = config
        self.url = url
        self._engine = engine
        self._writer = writer_engine(engine)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A read transaction: one consistent snapshot for every query inside it."""
        with self._database_errors(), Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back on any exception."""
        with self._database_errors(), Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
        """Driver errors become StoreErrors: callers (the CLI) print one line, not a traceback."""
        try:
            yield
        except IntegrityError as exc:
            raise StoreError(f"the store changed concurrently ({exc.orig}); try again") from exc
        except OverflowError as exc:  # sqlite3 cannot bind an int beyond 64 bits: nothing has such an id
            if "SQLite" not in str(exc):
                raise
            raise NotFoundError(f"no such record: ids are at most {MAX_INT}") from None
        except DBAPIError as exc:
            raise StoreError(f"database error at {safe_url(self.url)}: {exc.orig}") from exc

    def close(self) -> None:
        self._engine.dispose()
