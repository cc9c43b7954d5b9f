"""The PostgreSQL side of the store: the parametrization really switches backends, and a
missing driver is a clear StoreError naming the extra, not a ModuleNotFoundError."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from locft.store import Store
from locft.store.db import driver_problem, engine_url


def test_the_store_runs_on_the_backend_the_test_asked_for(store: Store, backend: str) -> None:
    assert store._engine.dialect.name == backend  # else the PostgreSQL runs would test SQLite twice


def test_a_driverless_postgresql_url_means_psycopg_3() -> None:
    assert engine_url("postgresql://u@db.example/locft").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg2://u@db.example/locft").drivername == "postgresql+psycopg2"
    assert engine_url("sqlite:////tmp/x.db").drivername == "sqlite"


def test_unknown_backends_and_bad_urls_are_named() -> None:
    assert "unknown database backend" in (driver_problem("nosuchdb://x/y") or "")
    assert "not a database URL" in (driver_problem("not a url") or "")


# a fresh interpreter in which psycopg cannot be imported, as on an install without the extra
NO_DRIVER = textwrap.dedent(
    """
    import sys, tempfile
    sys.modules["psycopg"] = None
    from locft.errors import StoreError
    from locft.config import StoreConfig
    from locft.home import Home
    from locft.store import Store
    from locft.store.db import driver_problem
    home = Home.resolve(tempfile.mkdtemp())
    home.create()
    print(driver_problem("postgresql://u@127.0.0.1:1/x"))
    try:
        Store.open(home, StoreConfig(database_url="postgresql://u@127.0.0.1:1/x"))
    except StoreError as exc:
        print("StoreError:", exc)
    """
)


def test_a_missing_driver_is_a_store_error_that_names_the_extra() -> None:
    out = subprocess.run([sys.executable, "-c", NO_DRIVER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and "ModuleNotFoundError" not in out.stderr
    assert lines[0] == ("the database driver for postgresql+psycopg is not installed (psycopg): "
                        "pip install 'locft[postgres]'")
    assert lines[1] == "StoreError: " + lines[0]
