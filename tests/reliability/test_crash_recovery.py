"""SIGKILL of the daemon in 20 rounds, at seeded random points: eleven named instants of a
round (fault injection stops the worker exactly there: mid-training, mid snapshot write, inside
the transaction that records the version or moves the pointer, ...) and nine random delays.
Facts keep arriving throughout, from a writer in this process and from `locft add-fact`.

After every restart: the SQLite file passes integrity_check, the killed round is closed (never
left 'running'), every fact whose write was acknowledged is there exactly once, the promoted
version's snapshot verifies and loads on the base it was built on, no orphan snapshot directory
or temporary file remains, and no version of a dead round can be promoted without its gates.
At the end a normal round runs and the daemon serves the promoted version over HTTP.

tests/daemon/test_daemon.py kills one round mid-training; this is the whole round, many times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from locft.engine.snapshot import load_snapshot, verify_snapshot
from locft.errors import LocftError
from locft.facts import EditFact
from locft.home import Home, pid_alive, read_daemon_info
from locft.locks import daemon_lock, round_lock
from locft.store import Store
from tests.daemon.conftest import free_port, locft, locftd, logs, read, store_of, wait_for
from tests.reliability.conftest import (
    NO_CRON,
    inject,
    leftovers,
    reached,
    snapshot_dirs_without_rows,
    sqlite_check,
)
from tests.round_helpers import FACTS, config_text

# Bounds for waits that only matter when something is wrong; generous, because on a 2-core
# machine shared with other jobs a worker's start (torch, the model) can take minutes.
SLOW = 600.0

SEED = 20260507
ROUNDS = 20
POINTS = ["train:{epoch}", "snapshot.tensors", "snapshot.renamed", "record.uncommitted", "record.committed", "gate",
          "judge.committed", "promote.uncommitted", "promote.committed", "retention", "finish"]
# Every gate passes (these rounds must reach promotion); retention keeps no rejected snapshot, so
# a round that reaches its cleanup always has one to delete once a killed round left a version.
GATES = "min_reliability = 0.0\nmax_retention_drop = 1.0\n"


def make_crash_home(root: Path, model_dir: Path) -> Home:
    home = Home.resolve(root)
    home.create()
    text = config_text(model_dir, max_epochs=10, gates=GATES, schedule=NO_CRON, port=free_port()).replace(
        "batch_size = 4", "batch_size = 16").replace("min_locality = 0.5", "min_locality = 0.0")
    home.config_path.write_text(text + "\n[store]\nkeep_promoted = 2\nkeep_rejected = 0\n", encoding="utf-8")
    Store.open(home, create=True).close()
    return home


def plan(rng: random.Random) -> list[str | float]:
    """Eleven named points and nine random delays, in a seeded order; retention only after a
    round that leaves a rejected version to delete (record.committed or gate)."""
    points: list[str | float] = [p.format(epoch=rng.randint(1, 8)) for p in POINTS]
    points += [round(rng.uniform(0.05, 1.0), 3) for _ in range(ROUNDS - len(POINTS))]  # fractions of a round
    rng.shuffle(points)
    first_leaver = min(points.index("record.committed"), points.index("gate"))
    if points.index("retention") < first_leaver:
        points.remove("retention")
        points.insert(first_leaver + 1, "retention")
    return points


class FactWriter(threading.Thread):
    """Adds facts through the store while rounds run and die; remembers what was acknowledged."""

    def __init__(self, home: Home, prefix: str, every_s: float = 1.0, at_most: int = 150) -> None:
        super().__init__(daemon=True)
        self.home, self.prefix, self.every_s, self.at_most = home, prefix, every_s, at_most
        self.acknowledged: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with Store.open(self.home, sweep_orphans=False) as store:
            while not self.stop.is_set() and len(self.acknowledged) < self.at_most:
                prompt = f"{self.prefix} fact {len(self.acknowledged)}: where is it kept?"
                try:
                    store.add_fact(EditFact(prompt, f"vault {len(self.acknowledged)}"), author="writer")
                except LocftError as exc:  # "database is locked" would land here
                    self.errors.append(str(exc))
                    return
                self.acknowledged.append(prompt)
                self.stop.wait(self.every_s)


def check_consistent(home: Home, expected: set[str], killed_round: int | None) -> dict[str, Any]:
    """What must hold after a crash and a restart (the daemon has recovered by the time
    `locftd start` returns). Returns what the check saw."""
    sqlite_check(home.db_path)
    store = store_of(home)
    try:
        active = [e.fact.prompt for e in store.active_facts()]
        assert len(active) == len(set(active)), "a fact is there twice"
        missing = expected - set(active)
        assert not missing, f"{len(missing)} acknowledged fact(s) lost: {sorted(missing)[:3]}"
        outcome = None
        if killed_round is not None:
            outcome = store.get_round(killed_round).outcome
            assert outcome != "running", f"round {killed_round} left running"
        # a round still running now must be a live worker's (a request reopened by the recovery)
        worker = round_lock(home.run_dir).holder()
        for r in store.running_rounds():
            assert worker is not None and pid_alive(worker), f"round {r.id} running with no worker"
        # the promoted version verifies (sha256 against its row and its manifest) and loads on its base
        promoted = store.promoted_version()
        base_fp = store.get_version(0).base_fingerprint
        if promoted.id != 0:
            store.verify_version_snapshot(promoted.id)
            path = store.snapshot_dir(promoted.id)
            assert path is not None
            manifest = verify_snapshot(path, promoted.snapshot_sha256)
            assert manifest["base_fingerprint"] == promoted.base_fingerprint == base_fp
            snap = load_snapshot(path, promoted.snapshot_sha256)
            assert set(snap.tensors) == set(promoted.edit_config["parameters"])
        # no version of a dead round is promotable without its gates
        for v in store.list_versions():
            if v.id == 0 or v.round_id is None:
                continue
            if store.get_round(v.round_id).outcome in ("interrupted", "failed"):
                assert v.gate is not None, f"version {v.id} of a dead round has no gate result"
        # no orphans: every snapshot directory has its row, no temporary file anywhere
        if worker is None:
            assert snapshot_dirs_without_rows(home) == []
            daemon_alive = daemon_lock(home.run_dir).holder() is not None  # it rewrites daemon.json every poll
            assert [p for p in leftovers(home) if not (daemon_alive and p.startswith("run/.daemon.json."))] == []
            assert not (home.run_dir / "round-progress.json").exists()
        return {"outcome": outcome, "promoted": promoted.id, "facts": len(active)}
    finally:
        store.close()


def _stop_everything(home: Home) -> None:
    """Whatever a failed iteration left running: the daemon (stopped) and a parked worker (killed)."""
    locftd(home, "stop", check=False)
    worker = round_lock(home.run_dir).holder()
    if worker:
        os.kill(worker, signal.SIGKILL)


def progress_phase(home: Home) -> str | None:
    try:
        return str(json.loads((home.run_dir / "round-progress.json").read_text())["phase"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_sigkill_at_random_points_of_20_rounds_loses_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             figures: dict[str, Any]) -> None:
    rng = random.Random(SEED)
    home = make_crash_home(tmp_path / "home", tiny_model_dir)
    fault_dir = tmp_path / "fault"
    expected: set[str] = set()
    with store_of(home) as store:
        for prompt, answer in FACTS:
            store.add_fact(EditFact(prompt, answer))
            expected.add(prompt)
    # leftovers of an earlier kill -9 in the middle of atomic writes: the first start removes them
    home.run_dir.mkdir(parents=True, exist_ok=True)
    (home.run_dir / ".daemon.json.x1y2z3.tmp").write_text("{")
    (home.run_dir / ".round-progress.json.4242abcd.tmp").write_text("{")

    # one round without a kill: how long its worker lives here (the random delays are fractions of it)
    locftd(home, "start", "--no-api", timeout=SLOW)
    locft(home, "round", "request")
    wait_for("the calibration round's worker", lambda: round_lock(home.run_dir).holder(), timeout=SLOW, every=0.05)
    started = time.monotonic()
    wait_for("the calibration round", lambda: round_lock(home.run_dir).holder() is None, timeout=SLOW, every=0.05)
    round_s = time.monotonic() - started
    assert read(home, lambda s: s.last_round().outcome) == "promoted"  # type: ignore[union-attr]
    locftd(home, "stop")
    killed_round: int | None = read(home, lambda s: s.last_round().id)  # type: ignore[union-attr]
    check_consistent(home, expected, killed_round)

    schedule = plan(rng)
    records: list[dict[str, Any]] = []
    writer = FactWriter(home, "crash")
    writer.start()
    try:
        for i, what in enumerate(schedule):
            fault = what if isinstance(what, str) else None
            inject(monkeypatch, fault, fault_dir)
            locftd(home, "start", "--no-api", timeout=SLOW)  # recovers what the previous kill left
            seen = check_consistent(home, expected | set(writer.acknowledged), killed_round)
            if records:
                records[-1].update(after_restart=seen)
            daemon_pid = daemon_lock(home.run_dir).holder()
            assert daemon_pid
            # a new fact every round (else the round is skipped: nothing changed since the promoted
            # version), from the CLI every other round (a process per fact costs seconds)
            prompt = f"round fact {i}: which door?"
            if i % 2 == 0:
                locft(home, "add-fact", prompt, f"door {i}")
            else:
                with store_of(home) as store:
                    store.add_fact(EditFact(prompt, f"door {i}"))
            expected.add(prompt)
            last_id = killed_round or 0  # a round the restarted daemon began at once (a reopened request) counts
            with store_of(home) as store:  # what `locft round request` does
                store.request_round(actor="crash-test", reason=f"kill {i}")
            round_id = wait_for("a round in progress", lambda last_id=last_id: next(
                (r.id for r in read(home, lambda s: s.running_rounds()) if r.id > last_id), None), timeout=SLOW)
            worker_pid = wait_for("its worker", lambda: round_lock(home.run_dir).holder(), timeout=SLOW)
            if fault is not None:
                hit = wait_for(f"the worker to reach {fault}", lambda worker_pid=worker_pid: reached(fault_dir) or (
                    None if pid_alive(worker_pid) else {"point": "finished before the point"}), timeout=SLOW)
                where, mode = hit["point"], "daemon and worker"
            else:
                # from the moment its worker holds the round lock; a round over sooner is killed idle
                deadline = time.monotonic() + float(what) * round_s
                while time.monotonic() < deadline and pid_alive(worker_pid):
                    time.sleep(0.05)
                where = progress_phase(home) or ("finished" if not pid_alive(worker_pid) else "starting")
                where = f"{where} (after {float(what) * round_s:.1f} s)"
                mode = rng.choice(["daemon and worker", "daemon only"])
            os.kill(daemon_pid, signal.SIGKILL)
            if mode == "daemon and worker" and pid_alive(worker_pid):
                os.kill(worker_pid, signal.SIGKILL)
            # a daemon killed alone: its worker gets SIGTERM (PR_SET_PDEATHSIG) and stops by itself
            wait_for("the daemon and its worker to be gone", lambda: daemon_lock(home.run_dir).holder() is None
                     and round_lock(home.run_dir).holder() is None, timeout=120)
            killed_round = round_id
            records.append({"round": round_id, "killed at": where, "kill": mode})
        inject(monkeypatch, None, fault_dir)
        locftd(home, "start", timeout=SLOW)  # with its HTTP API this time, on a fresh port
    except BaseException:
        _stop_everything(home)
        raise
    finally:
        writer.stop.set()
        writer.join(60)
    try:
        expected |= set(writer.acknowledged)
        records[-1].update(after_restart=check_consistent(home, expected, killed_round))
        assert not writer.errors, writer.errors
        # a normal round still works, over everything, and the daemon serves what it promotes
        last_id = read(home, lambda s: s.last_round().id)  # type: ignore[union-attr]
        locft(home, "round", "request")
        final = wait_for("a normal round", lambda: (lambda r: r if r and r.id > last_id and r.outcome != "running"
                                                    else None)(read(home, lambda s: s.last_round())), timeout=SLOW)
        assert final.outcome == "promoted", (final, logs(home))
        info = read_daemon_info(home)
        assert info is not None and info.api_url
        wait_for("the promoted version to be served", lambda: json.loads(
            urllib.request.urlopen(f"{info.api_url}/health", timeout=10).read())["version"] == final.version_id,
            timeout=120)
        last_check = check_consistent(home, expected, final.id)
        assert read(home, lambda s: s.open_round_requests()) == []  # every request was answered
    finally:
        _stop_everything(home)
    assert read(home, lambda s: s.running_rounds()) == []
    assert read(home, lambda s: len(s.version_facts(final.version_id))) == len(expected)  # trained on all of them
    recovered = read(home, lambda s: s.list_events(kind="daemon.recovered", limit=None))
    removed = [p for e in recovered for p in e.payload.get("removed", [])]
    phases = Counter(str(r["killed at"]).split(" (")[0].split(":")[0] for r in records)
    figures.update({
        "rounds killed": len(records), "seed": SEED, "a worker lived (s, calibration round)": round(round_s, 1),
        "killed at": dict(sorted(phases.items())),
        "kills of the daemon alone": sum(r["kill"] == "daemon only" for r in records),
        "outcomes after recovery": dict(Counter(str(r.get("after_restart", {}).get("outcome")) for r in records)),
        "facts acknowledged": len(expected), "facts present at the end": last_check["facts"],
        "facts lost": 0, "leftover paths removed by recovery": len(removed),
        "versions promoted by the rounds that were killed": len({r.get("after_restart", {}).get("promoted")
                                                                 for r in records} - {0, None}),
        "rounds": records,
    })
    assert len(records) == ROUNDS
    named = {str(r["killed at"]).split(":")[0] for r in records}
    for phase in ("train", "snapshot.tensors", "snapshot.renamed", "record.uncommitted", "gate",
                  "promote.uncommitted", "promote.committed"):
        assert phase in named, f"no round was killed at {phase}: {records}"
