"""Helpers for store and CLI tests: snapshot directories as the engine writes them, versions."""

from __future__ import annotations

import os
from pathlib import Path

from locft.facts import EditFact
from locft.home import Home
from locft.store import Store, VersionInfo


def make_snapshot(home: Home, name: str, payload: bytes | None = None, age_s: float = 0.0) -> Path:
    """A snapshot directory as the engine writes it (contents are opaque to the store)."""
    path = home.snapshots_dir / name
    path.mkdir(parents=True)
    (path / "tensors.safetensors").write_bytes(payload if payload is not None else name.encode() * 64)
    (path / "manifest.json").write_text("{}", encoding="utf-8")
    if age_s:
        old = path.stat().st_mtime - age_s
        os.utime(path, (old, old))
    return path


def add_facts(store: Store, n: int, prefix: str = "q") -> list[int]:
    return [store.add_fact(EditFact(f"{prefix} question {i}?", f"answer {i}")).fact_id for i in range(n)]


def new_version(store: Store, name: str, *, passed: bool | None = None, fingerprint: str = "base-fp",
                round_id: int | None = None) -> VersionInfo:
    """Record a version trained on every active fact, optionally with a gate outcome."""
    entries = store.active_facts()
    v = store.record_version(
        revision_ids=[e.revision_id for e in entries], snapshot_dir=make_snapshot(store.home, name),
        base_fingerprint=fingerprint, edit_config={"lr": 0.005, "layers": [3]}, round_id=round_id,
    )
    if passed is not None:
        store.record_gate_result(v.id, passed=passed, metrics={"reliability": 1.0 if passed else 0.5},
                                 report={"reasons": [] if passed else ["reliability 0.50 < 0.95"]},
                                 round_id=round_id)
    return store.get_version(v.id)
