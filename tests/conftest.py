"""Shared fixtures: a fresh $LOCFT_HOME per test (real directories, real SQLite files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from locft.home import Home


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """An initialized home tree (no database yet) that $LOCFT_HOME points to."""
    root = tmp_path / "home"
    monkeypatch.setenv("LOCFT_HOME", str(root))
    monkeypatch.setenv("LOCFT_AUTHOR", "tester")
    h = Home.resolve(root)
    h.create()
    return h
