"""Shared pieces of the reliability suite (docs/reliability.md): the figures each test measures,
and the checks that say a home lost nothing and is consistent.

Figures: every test records what it measured (rounds killed and where, facts written, inputs
tried, what was lost) with the `figures` fixture; they are printed at the end of the run
("reliability figures") and, with LOCFT_RELIABILITY_FIGURES=path.json, written there.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from locft.api import ApiServer, start_api_server
from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, load_base
from locft.home import Home
from tests.serving_helpers import make_served_home

_FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures (kept only when it is non-empty)."""
    data: dict[str, Any] = {}
    yield data
    if data:
        _FIGURES[request.node.nodeid] = data


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for nodeid, data in _FIGURES.items():
        terminalreporter.write_line(nodeid)
        for key, value in data.items():
            terminalreporter.write_line(f"    {key}: {json.dumps(value, default=str)}")
    path = os.environ.get("LOCFT_RELIABILITY_FIGURES")
    if path:
        Path(path).write_text(json.dumps(_FIGURES, indent=2, default=str) + "\n", encoding="utf-8")


# ---- fault injection (tests/reliability/faults/sitecustomize.py) ------------------------------

FAULTS_DIR = Path(__file__).resolve().parent / "faults"
NO_CRON = 'cron = "0 0 1 1 *"\nmisfire_grace_seconds = 1\n'  # no scheduled round during a test


def inject(monkeypatch: pytest.MonkeyPatch, fault: str | None, reached_dir: Path) -> None:
    """Processes started from now on (a daemon, its round workers, the CLI) load the fault
    injection with `fault` (None: none). Set it before starting the daemon."""
    if fault is None:
        monkeypatch.delenv("LOCFT_FAULT", raising=False)
        return
    reached_dir.mkdir(parents=True, exist_ok=True)
    (reached_dir / "reached").unlink(missing_ok=True)
    paths = [str(FAULTS_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                 if p and p != str(FAULTS_DIR)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("LOCFT_FAULT", fault)
    monkeypatch.setenv("LOCFT_FAULT_DIR", str(reached_dir))


def reached(reached_dir: Path) -> dict[str, Any] | None:
    """Where the worker stopped ({"point", "pid"}), once it did."""
    try:
        return dict(json.loads((reached_dir / "reached").read_text()))
    except (OSError, ValueError):
        return None


# ---- a served home and its API (per module) -----------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, loaded: LoadedModel) -> Home:
    """The tiny model, 4 facts, version 1 trained and promoted (tests/serving_helpers.py)."""
    return make_served_home(tmp_path_factory.mktemp("served") / "home", tiny_model_dir, loaded)


@pytest.fixture(scope="module")
def api(served_home: Home, loaded: LoadedModel) -> Iterator[ApiServer]:
    server = start_api_server(served_home, port=0, loaded=loaded, poll_s=0.2)
    yield server
    server.shutdown()


def http(api: ApiServer, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request over a raw socket (so that any body, latin-1 path or header can be sent)."""
    head = f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection((api.host, api.port), timeout=120) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    head_bytes, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head_bytes.lower():  # a stream (SSE): undo the chunking
        body, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        payload = body
    return int(status_line.split()[1]), payload


# ---- what "nothing lost, nothing half-done" means, checked from the outside ---------------------


def sqlite_check(db_path: Path) -> None:
    """The SQLite file is sound: integrity_check says ok, no foreign key points nowhere."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def table_counts(db_path: Path) -> dict[str, Any]:
    """Row counts of every table plus the promoted pointer: equal before and after means the
    store did not change (the audit log grows with every write, so a write cannot hide)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts: dict[str, Any] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        counts["pointer"] = conn.execute("SELECT version_id FROM promoted_pointer").fetchall()
        return counts
    finally:
        conn.close()


LEFTOVER_PREFIXES = (".tmp-",)  # locft.atomic's temp directories; its temp files end in .tmp


def leftovers(home: Home) -> list[str]:
    """Temporary files or directories a writer died with, anywhere under the home."""
    found = []
    for path in home.root.rglob("*"):
        if path.name.startswith(LEFTOVER_PREFIXES) or path.name.endswith((".tmp", ".partial")):
            found.append(str(path.relative_to(home.root)))
    return sorted(found)


def snapshot_dirs_without_rows(home: Home) -> list[str]:
    """Snapshot directories no Version row points to (orphans)."""
    conn = sqlite3.connect(f"file:{home.db_path}?mode=ro", uri=True, timeout=30)
    try:
        known = {r[0] for r in conn.execute("SELECT snapshot_path FROM version WHERE snapshot_path IS NOT NULL")}
    finally:
        conn.close()
    if not home.snapshots_dir.is_dir():
        return []
    return sorted(p.name for p in home.snapshots_dir.iterdir() if home.relative(p) not in known)
