"""A real `locftd` on the tiny model: promotion, a failed gate, kill -9 mid-round, SIGTERM mid-round."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

from locft.daemon.service import STOP_BOUND_S
from locft.errors import DaemonError, error_code
from locft.facts import EditFact
from locft.home import Home, read_daemon_info
from locft.locks import daemon_lock, round_lock
from tests.daemon.conftest import foreground, free_port, locft, locftd, logs, read, store_of, wait_for
from tests.round_helpers import ABSURD_LR, FACTS, make_home


def _served_version(url: str) -> int | None:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return json.loads(resp.read())["version"]


def _running_round(home: Home, not_id: int | None = None) -> int | None:
    """The id of the round in progress once its worker holds the round lock and trains."""
    if round_lock(home.run_dir).holder() is None:
        return None
    running = read(home, lambda s: s.running_rounds())
    ids = [r.id for r in running if r.id != not_id]
    return ids[0] if ids else None


def _mid_training(home: Home, round_id: int) -> bool:
    log = home.logs_dir / "rounds.log"
    text = log.read_text() if log.exists() else ""
    start = text.find(f"round {round_id} (")
    return start >= 0 and "epoch 2/" in text[start:]


def test_daemon_promotes_facts_added_through_the_cli(tmp_path: Path, daemon_model_dir: Path) -> None:
    home = make_home(tmp_path / "home", daemon_model_dir, port=free_port())
    out = locftd(home, "start").stdout  # with its HTTP API: it must serve the promoted version
    pid = daemon_lock(home.run_dir).holder()
    assert pid and f"pid {pid}" in out
    try:
        second = locftd(home, "start", check=False)
        assert second.returncode == error_code(DaemonError)[1]
        assert "already running" in second.stderr and str(pid) in second.stderr
        for prompt, answer in FACTS[:3]:
            locft(home, "add-fact", prompt, answer)
        assert "round requested" in locft(home, "round", "request").stdout

        wait_for("version 1 to be promoted", lambda: read(home, lambda s: s.promoted_version().id == 1))
        round_ = read(home, lambda s: s.last_round())
        assert round_.outcome == "promoted" and round_.trigger == "request" and round_.version_id == 1
        assert round_.timings and round_.timings["train"] > 0 and round_.loss_history
        shown = json.loads(locft(home, "versions", "show", "1", "--json").stdout)
        assert shown["state"] == "promoted" and shown["fact_count"] == 3
        assert shown["gate"]["passed"] and shown["gate"]["metrics"]["reliability"] == 1.0
        info = read_daemon_info(home)
        assert info is not None and info.pid == pid and info.next_round_at  # what `locft status` reads
        assert info.api_url and info.api_url in out
        wait_for("the API to serve version 1", lambda: _served_version(info.api_url) == 1, timeout=30)
        status = locftd(home, "status")
        assert "running" in status.stdout and "promoted version: 1" in status.stdout
    finally:
        locftd(home, "stop")
    assert daemon_lock(home.run_dir).holder() is None and not home.daemon_file.exists()
    assert locftd(home, "status", check=False).returncode == 3
    assert "locftd stopped" in (home.logs_dir / "locftd.log").read_text()


def test_failed_gate_rejects_and_keeps_the_promoted_version(tmp_path: Path, daemon_model_dir: Path) -> None:
    # scope "always": the absurd learning rate breaks unrelated answers only where the edit applies
    home = make_home(tmp_path / "home", daemon_model_dir, scope="always")
    for prompt, answer in FACTS[:2]:
        locft(home, "add-fact", prompt, answer)
    ran = locft(home, "round", "run")  # the foreground round: version 1, no daemon involved
    assert "PROMOTED" in ran.stdout, ran.stdout + ran.stderr
    # Now an absurd learning rate, and the pending-facts trigger instead of a request.
    text = home.config_path.read_text().replace("lr = 0.01", f"lr = {ABSURD_LR}")
    home.config_path.write_text(text.replace("[schedule]\n", "[schedule]\nmin_pending_facts = 1\n"))
    locftd(home, "start", "--no-api")
    try:
        locft(home, "add-fact", *FACTS[2])
        last = wait_for("a rejected round", lambda: (lambda r: r if r and r.outcome == "rejected" else None)(
            read(home, lambda s: s.last_round())), timeout=90)
        assert last.trigger == "pending"
        assert read(home, lambda s: s.promoted_version().id) == 1
        assert read(home, lambda s: s.get_version(last.version_id).state) == "rejected"
        time.sleep(2.5)  # several polls: the rejected fact set must not be retrained in a loop
        assert read(home, lambda s: s.last_round().id) == last.id, logs(home)
    finally:
        locftd(home, "stop")


def test_kill_9_mid_round_then_restart_finds_the_store_consistent(tmp_path: Path, daemon_model_dir: Path) -> None:
    home = make_home(tmp_path / "home", daemon_model_dir, slow=True)
    with store_of(home) as store:
        for prompt, answer in FACTS[:2]:
            store.add_fact(EditFact(prompt, answer))
    locftd(home, "start", "--no-api")
    daemon_pid = daemon_lock(home.run_dir).holder()
    locft(home, "round", "request")
    round_id = wait_for("a round in progress", lambda: _running_round(home), timeout=60)
    wait_for("training to be under way", lambda: _mid_training(home, round_id), timeout=60)
    worker_pid = round_lock(home.run_dir).holder()
    assert daemon_pid and worker_pid and worker_pid != daemon_pid
    status = locftd(home, "status").stdout
    assert f"round in progress: {round_id}" in status and "phase: train" in status, status
    # The machine "crashes": daemon and worker die at once, nobody gets to clean up.
    os.kill(daemon_pid, signal.SIGKILL)
    os.kill(worker_pid, signal.SIGKILL)
    wait_for("both locks to be released", lambda: daemon_lock(home.run_dir).holder() is None
             and round_lock(home.run_dir).holder() is None, timeout=20)
    assert read(home, lambda s: s.get_round(round_id).outcome) == "running"
    leftover_tmp = home.snapshots_dir / ".tmp-round-000999-crash"
    leftover_tmp.mkdir(parents=True)
    orphan = home.snapshots_dir / "round-000999-deadbeef"
    orphan.mkdir()

    locftd(home, "start", "--no-api")  # a stale daemon.json and lock file are there: both recovered
    try:
        r = read(home, lambda s: s.get_round(round_id))
        assert r.outcome == "interrupted" and r.finished_at is not None
        assert not leftover_tmp.exists() and not orphan.exists()
        assert read(home, lambda s: s.promoted_version().id) == 0
        assert read(home, lambda s: len(s.active_facts())) == 2  # no fact lost
        assert read(home, lambda s: s.list_events(kind="daemon.recovered", limit=1))
        assert read(home, lambda s: s.open_round_requests()) == []  # the request was answered (interrupted)
        assert "interrupted" in locft(home, "round", "list").stdout
    finally:
        locftd(home, "stop")


def test_sigterm_mid_round_exits_within_the_bound(tmp_path: Path, daemon_model_dir: Path) -> None:
    home = make_home(tmp_path / "home", daemon_model_dir, slow=True)
    with store_of(home) as store:
        for prompt, answer in FACTS[:2]:
            store.add_fact(EditFact(prompt, answer))
    proc = foreground(home)
    try:
        wait_for("the daemon to be ready", lambda: read_daemon_info(home), timeout=30)

        # A worker that dies (OOM-style SIGKILL) costs one round; the daemon records it and carries on.
        locft(home, "round", "request")
        first = wait_for("a round in progress", lambda: _running_round(home), timeout=60)
        os.kill(round_lock(home.run_dir).holder() or 0, signal.SIGKILL)
        failed = wait_for("the round to be recorded as failed",
                          lambda: (lambda r: r if r.outcome == "failed" else None)(
                              read(home, lambda s: s.get_round(first))), timeout=30)
        assert "SIGKILL" in (failed.error or "")
        assert proc.poll() is None

        locft(home, "round", "request")
        second = wait_for("another round in progress", lambda: _running_round(home, not_id=first), timeout=60)
        wait_for("training to be under way", lambda: _mid_training(home, second), timeout=60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=STOP_BOUND_S + 10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert rc == 0, stderr[-3000:]
    assert elapsed < STOP_BOUND_S, f"took {elapsed:.1f} s"
    assert read(home, lambda s: s.get_round(second).outcome) == "interrupted"
    assert read(home, lambda s: s.running_rounds()) == []
    assert read(home, lambda s: s.promoted_version().id) == 0
    assert daemon_lock(home.run_dir).holder() is None and round_lock(home.run_dir).holder() is None
    assert not home.daemon_file.exists()
    assert not [p for p in home.snapshots_dir.iterdir() if p.name.startswith(".tmp-")]
