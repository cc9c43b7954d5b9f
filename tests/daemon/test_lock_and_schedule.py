"""The pieces of the daemon that need no process: locks, the missed-cron rule, exit descriptions."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from locft.daemon.service import describe_exit
from locft.daemon.triggers import missed_cron_run
from locft.home import Home
from locft.locks import LockHeld, PidLock

UTC = timezone.utc


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    a = PidLock(tmp_path / "x.lock", "test lock").acquire()
    assert a.holder() == os.getpid()
    with pytest.raises(LockHeld) as err:
        PidLock(tmp_path / "x.lock", "test lock").acquire()  # another open file description: refused
    assert err.value.pid == os.getpid() and str(os.getpid()) in str(err.value)
    assert PidLock(tmp_path / "x.lock").holder() == os.getpid()
    a.release()
    assert PidLock(tmp_path / "x.lock").holder() is None


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    # A process that takes the lock and dies without releasing it (as kill -9 would).
    code = (f"import os; from locft.locks import PidLock; PidLock({str(path)!r}).acquire(); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert path.read_text().strip().isdigit()  # its pid is still written there
    assert PidLock(path).holder() is None  # ...but the kernel released the flock
    lock = PidLock(path).acquire()
    assert path.read_text().strip() == str(os.getpid())
    lock.release()


def test_lock_fd_is_not_inherited_by_children(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    lock = PidLock(path).acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        lock.release()
        assert PidLock(path).holder() is None  # the child does not keep it alive
    finally:
        child.kill()
        child.wait()


NOW = datetime(2026, 3, 10, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "grace_h, last_cron_round, previous_start, missed",
    [
        (6, None, NOW - timedelta(days=2), datetime(2026, 3, 10, 2, 0, tzinfo=UTC)),  # down over 02:00
        (2, None, NOW - timedelta(days=2), None),  # 02:00 is beyond the grace
        (6, datetime(2026, 3, 10, 2, 0, 5, tzinfo=UTC), NOW - timedelta(days=2), None),  # it ran
        (6, datetime(2026, 3, 9, 2, 0, tzinfo=UTC), NOW - timedelta(days=2), datetime(2026, 3, 10, 2, 0, tzinfo=UTC)),
        (6, None, None, None),  # a brand-new home does not catch up
        (6, None, NOW - timedelta(hours=1), None),  # the first daemon started after 02:00
    ],
)
def test_missed_cron_run(grace_h: int, last_cron_round: datetime | None, previous_start: datetime | None,
                         missed: datetime | None) -> None:
    assert missed_cron_run("0 2 * * *", NOW, grace_h * 3600, last_cron_round, previous_start) == missed


@pytest.mark.parametrize("code", ["EVENT_JOB_MISSED", "EVENT_JOB_MAX_INSTANCES"])
def test_a_missed_or_overlapping_cron_run_is_logged(home: Home, code: str) -> None:
    """APScheduler reports the two with different event classes (scheduled_run_time vs
    scheduled_run_times); the listener crashed on the second ("Error notifying listener")."""
    from apscheduler import events

    from locft.daemon.service import EVENT_JOB_MISSED, Daemon
    from locft.store import Store

    when = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    event = (events.JobExecutionEvent(events.EVENT_JOB_MISSED, "cron", "default", when)
             if code == "EVENT_JOB_MISSED" else
             events.JobSubmissionEvent(events.EVENT_JOB_MAX_INSTANCES, "cron", "default", [when]))
    with Store.open(home, create=True) as store:
        daemon = Daemon(home)
        daemon._store = store
        daemon._on_job_event(event)
        logged = store.list_events(kind=EVENT_JOB_MISSED)
    assert len(logged) == 1 and "2026-03-10 02:00" in logged[0].payload["scheduled"]


def test_worker_exits_are_described() -> None:
    assert "SIGKILL" in describe_exit(-9) and "memory" in describe_exit(-9)
    assert describe_exit(1) == "exit code 1"


def test_daemon_and_round_shells_do_not_import_torch() -> None:
    code = ("import sys, locft.daemon.cli, locft.daemon.service, locft.cli.rounds, locft.rounds.plan, "
            "locft.rounds.recovery, locft.locks; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
