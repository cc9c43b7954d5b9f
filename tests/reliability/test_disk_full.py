"""The disk fills up while a round writes its snapshot (a real kernel limit: RLIMIT_FSIZE set
around the snapshot write in the round's process, so write() fails with EFBIG as on a full
disk). The round fails cleanly, with the reason: no half-written snapshot, no version row, the
pointer unchanged, no temporary file left; the daemon carries on, and the next round, with room
again, succeeds. Both ways of running a round: `locft round run` and the daemon's worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from locft.facts import EditFact
from locft.home import Home
from tests.daemon.conftest import locft, locftd, logs, read, store_of, wait_for
from tests.reliability.conftest import NO_CRON, inject, leftovers, sqlite_check
from tests.round_helpers import FACTS, make_home

LIMIT = 16 * 1024  # bytes: below the tiny model's tuned tensors (a 64x128 float32 down_proj = 32 KiB)


def assert_nothing_half_written(home: Home, versions_before: list[int]) -> None:
    sqlite_check(home.db_path)
    assert read(home, lambda s: [v.id for v in s.list_versions()]) == versions_before  # no version row
    assert read(home, lambda s: s.promoted_version().id) == 0
    assert read(home, lambda s: s.running_rounds()) == []
    assert [p.name for p in home.snapshots_dir.iterdir()] == []  # no snapshot, whole or partial
    assert leftovers(home) == []  # no .tmp- directory either
    assert read(home, lambda s: len(s.active_facts())) == 2  # and no fact lost


def test_a_full_disk_fails_the_round_cleanly(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             figures: dict[str, Any]) -> None:
    home = make_home(tmp_path / "home", tiny_model_dir, schedule=NO_CRON)
    with store_of(home) as store:
        for prompt, answer in FACTS[:2]:
            store.add_fact(EditFact(prompt, answer))
    versions = read(home, lambda s: [v.id for v in s.list_versions()])
    inject(monkeypatch, f"fsize:{LIMIT}", tmp_path / "fault")

    # the foreground round: one clear line, exit 1, recorded as failed with the reason
    ran = locft(home, "round", "run", check=False)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr and "File too large" in ran.stderr, ran.stderr
    first = read(home, lambda s: s.last_round())
    assert first is not None and first.outcome == "failed" and "File too large" in (first.error or "")
    assert_nothing_half_written(home, versions)

    # the daemon's worker: the same, and the daemon carries on
    locftd(home, "start", "--no-api")
    try:
        locft(home, "round", "request")
        second = wait_for("the daemon's round to fail", lambda: (lambda r: r if r and r.id != first.id
                          and r.outcome == "failed" else None)(read(home, lambda s: s.last_round())), timeout=120)
        assert "File too large" in (second.error or ""), second.error
        assert locftd(home, "status").returncode == 0  # still running
        assert "failed" in locft(home, "status").stdout
        wait_for("the worker to be gone", lambda: not leftovers(home), timeout=20)
        assert_nothing_half_written(home, versions)
    finally:
        locftd(home, "stop")

    # room again: the next round writes its snapshot and is promoted
    inject(monkeypatch, None, tmp_path / "fault")
    ran = locft(home, "round", "run")
    assert "PROMOTED" in ran.stdout, ran.stdout + ran.stderr + logs(home)
    version = read(home, lambda s: s.promoted_version())
    store = store_of(home)
    try:
        store.verify_version_snapshot(version.id)
    finally:
        store.close()
    assert leftovers(home) == []
    figures.update({"rounds run out of disk space": 2, "failed cleanly": 2, "half-written files left": 0,
                    "versions recorded for them": 0, "facts lost": 0, "next round with room": "promoted"})
