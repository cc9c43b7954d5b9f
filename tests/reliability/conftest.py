"""Shared pieces of the reliability suite (docs/reliability.md): the figures each test measures,
and the checks that say a home lost nothing and is consistent.

Figures: every test records what it measured (rounds killed and where, facts written, inputs
tried, what was lost) with the `figures` fixture; they are printed at the end of the run
("reliability figures") and, with LOCFT_RELIABILITY_FIGURES=path.json, written there.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from locft.home import Home

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


LEFTOVER_PREFIXES = (".tmp-", ".daemon-", ".round-progress")


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
