"""Every store test runs on SQLite and on PostgreSQL.

PostgreSQL: set LOCFT_TEST_POSTGRES_URL to a database on a server where that user may create
databases (`.ci/start-postgres` starts one and prints it); each test gets a fresh database of
its own, dropped afterwards. Without the URL the PostgreSQL runs are skipped, saying so, except
in CI (CI=true), where a missing server is a failure: the suite must not pass on SQLite alone.
Tests of SQLite's own behaviour (WAL, its lock) carry `@pytest.mark.sqlite_only`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from locft.home import Home
from locft.store import Store

POSTGRES_URL_ENV = "LOCFT_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: tests SQLite's own behaviour; not run on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", BACKENDS[:1] if only else BACKENDS, scope="function")


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    why = f"PostgreSQL store tests need {POSTGRES_URL_ENV} (eval \"$(.ci/start-postgres)\" starts a server)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; in CI they must run, not skip")
    pytest.skip(why)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped on exit."""
    import sqlalchemy as sa

    admin_url = sa.make_url(postgres_url())
    name = f"locft_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield admin_url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:  # FORCE: a leaked connection (a killed writer) must not block it
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextlib.contextmanager
def backend_home(root: Path, backend: str) -> Iterator[Home]:
    """A fresh home on `backend`, for tests that make many (one per hypothesis example)."""
    home = Home.resolve(root)
    home.create()
    if backend == "sqlite":
        yield home
        return
    with postgres_database() as url:
        home.config_path.write_text(f'[store]\ndatabase_url = "{url}"\n', encoding="utf-8")
        yield home


@pytest.fixture
def fresh_postgres_database() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def backend() -> str:  # parametrized by pytest_generate_tests
    raise AssertionError("parametrized in pytest_generate_tests")


@pytest.fixture
def home(home: Home, backend: str, request: pytest.FixtureRequest) -> Home:
    """The shared `home` fixture, its locft.toml pointing at a fresh PostgreSQL database when the
    test runs on PostgreSQL (so Store.open(home), subprocesses included, uses it)."""
    if backend == "postgresql":
        url = request.getfixturevalue("fresh_postgres_database")
        home.config_path.write_text(f'[store]\ndatabase_url = "{url}"\n', encoding="utf-8")
    return home


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    s = Store.open(home, create=True)
    yield s
    s.close()
