"""The daemon: one per $LOCFT_HOME; schedules rounds and runs each in a worker process.

Threads: the MAIN thread owns the lifecycle and runs rounds one at a time (it starts the worker
and waits for it, so stop signals reach it directly); APScheduler's thread only adds triggers
(cron, pending facts, requests) to `locft.daemon.triggers.Triggers`, which coalesces them.
Starting and stopping a daemon from another process: `locft.daemon.control`.

Lifecycle of `run()`:
  1. take run/locftd.lock (flock; a second daemon is refused with the holder's pid; a lock file
     left by a dead daemon is simply taken again);
  2. recover: rounds left 'running' by a killed process are marked interrupted, their ungated
     candidates failed, orphan snapshot files removed (only while holding the round lock, so
     a foreground `locft round run` is never touched);
  3. start the HTTP API (locft.api, unless --no-api): it loads the base model, serves the
     promoted version and hot-swaps when a round promotes one; then write run/daemon.json (pid,
     started_at, next_round_at, api_url) for `locft status` (`locftd start` waits for it);
  4. schedule: cron (schedule.cron, local time, coalesced, misfire grace), a poll every
     schedule.poll_seconds for round requests and the pending-facts trigger; a cron run missed
     while the daemon was down (within the misfire grace) runs at start;
  5. loop until SIGTERM/SIGINT; then stop the running worker (SIGTERM, then SIGKILL after
     STOP_GRACE_S), record its round as interrupted, remove temp files, release the lock.

STOP_BOUND_S is the documented bound between the signal and the process exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from locft import __version__
from locft.config import LocftConfig, load_config
from locft.daemon.triggers import Triggers, missed_cron_run, now_local
from locft.errors import DaemonError, LocftError
from locft.home import DaemonInfo, Home, write_daemon_info
from locft.locks import LockHeld, PidLock, daemon_lock, round_lock

if TYPE_CHECKING:
    from locft.policies.schedule import Trigger

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # a worker gets this long to stop cooperatively before SIGKILL
STOP_BOUND_S = 15.0  # documented: the daemon exits within this many seconds of SIGTERM/SIGINT
TICK_S = 0.2  # how often the main loop looks at its worker and the stop flag
BUSY_RETRY_S = 5.0  # a round lock held elsewhere (foreground `locft round run`): retry after this

EVENT_STARTED = "daemon.started"
EVENT_STOPPED = "daemon.stopped"
EVENT_RECOVERED = "daemon.recovered"
EVENT_WORKER_FAILED = "daemon.worker_failed"
EVENT_JOB_MISSED = "daemon.job_missed"


def describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -rc == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {rc}"


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    trigger: Trigger
    digest: str
    request_ids: tuple[int, ...]
    started: float


class Daemon:
    """`Daemon(home).run()` blocks until stopped; returns the process exit code."""

    def __init__(
        self, home: Home, *, foreground: bool = True, config: LocftConfig | None = None, api: bool = True
    ) -> None:
        self.home = home
        self.foreground = foreground
        self.api_enabled = api
        self.config = config or load_config(home.root)
        self.lock: PidLock = daemon_lock(home.run_dir)
        self.started_at = now_local()
        self._stop = threading.Event()
        self._triggers = Triggers()
        self._claimed: tuple[int, ...] = ()  # requests claimed for a round that has not started yet
        self._failed_digest: str | None = None  # don't let automatic triggers retry a crashing set
        self._worker: _Worker | None = None
        self._store: Any = None
        self._api: Any = None  # locft.api.ApiServer: the HTTP API, hot-swapping on promotion
        self._busy_logged = False

    # ---- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.lock.acquire()
        except LockHeld as exc:
            raise DaemonError(
                f"locftd is already running for {self.home.root} (pid {exc.pid}); `locftd stop` stops it"
            ) from None
        try:
            return self._run_locked()
        finally:
            self.lock.release()

    def _run_locked(self) -> int:
        from locft.store import Store

        self._install_signals()
        log.info("locftd %s starting: pid %d, home %s", __version__, os.getpid(), self.home.root)
        self._store = store = Store.open(self.home, self.config.store, sweep_orphans=False)
        try:
            previous_start = self._previous_start()
            self._recover("started")
            store.log_event(EVENT_STARTED, actor="locftd", payload={
                "pid": os.getpid(), "version": __version__, "foreground": self.foreground,
            })
            if self.api_enabled:
                self._start_api()  # before daemon.json: `locftd start` reports ready only when it serves
            self._start_scheduler(previous_start)
            self._write_info()
            log.info("locftd ready (cron %r, poll every %.0f s, pending-facts trigger %s)",
                     self.config.schedule.cron, self.config.schedule.poll_seconds,
                     self.config.schedule.min_pending_facts or "off")
            while not self._stop.is_set():
                trigger = self._triggers.take(timeout=1.0, stop=self._stop)
                if trigger is not None:
                    self._handle(trigger)
            return 0
        finally:
            self._shutdown()

    def request_stop(self, why: str = "stop requested") -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", why)
        self._stop.set()
        self._triggers.wake()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # tests may run a Daemon in a thread; they call request_stop themselves

        def on_signal(signum: int, _frame: object) -> None:
            self.request_stop(f"received {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal must not kill a nohup'ed daemon

    def _start_api(self) -> None:
        """The HTTP API (locft.api) in this process: it loads the base model and serves the promoted
        version; its watcher hot-swaps when a round promotes. A failure (port taken, model missing)
        stops the start with the reason: a daemon that half-started would be worse."""
        from locft.api import start_api_server

        log.info("starting the HTTP API on %s:%d (loading the base model)", self.config.serve.host,
                 self.config.serve.port)
        self._api = start_api_server(self.home, self.config)
        log.info("HTTP API ready at %s", self._api.url)

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        if self._api is not None:
            try:
                self._api.shutdown()  # stop taking requests first; rounds are recorded below
            except Exception:  # noqa: BLE001 - stopping must go on
                log.exception("could not stop the HTTP API cleanly")
        if self._worker is not None:
            self._stop_worker("the daemon is stopping")
            self._after_worker(stopping=True)
        self._triggers.shutdown()
        try:
            self._store.log_event(EVENT_STOPPED, actor="locftd", payload={"pid": os.getpid()})
        except Exception:  # noqa: BLE001 - stopping must not fail on the audit log
            log.exception("could not log the daemon's stop")
        try:
            self.home.daemon_file.unlink(missing_ok=True)
        except OSError:
            pass
        self._store.close()
        log.info("locftd stopped (%.1f s to shut down)", time.monotonic() - t0)

    # ---- recovery ---------------------------------------------------------------------------

    def _previous_start(self) -> datetime | None:
        events = self._store.list_events(kind=EVENT_STARTED, limit=1)
        return events[0].created_at if events else None

    def _recover(self, when: str, outcome: Literal["interrupted", "failed"] = "interrupted",
                 error: str | None = None) -> None:
        """Close dead rounds, but only while holding the round lock (a live round is never touched)."""
        from locft.atomic import temp_glob
        from locft.rounds.live import PROGRESS_FILE
        from locft.rounds.recovery import recover_rounds

        lock = round_lock(self.home.run_dir)
        try:
            lock.acquire()
        except LockHeld as exc:
            log.info("a round is running in pid %s: recovery postponed", exc.pid)
            return
        try:
            rec = recover_rounds(self._store, self.home, outcome=outcome, error=error, actor="locftd")
            (self.home.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a dead worker's last words
            # Temp files of atomic writes cut short by a kill -9: a worker's progress file (no worker
            # runs: we hold the round lock) and, at start, a daemon's daemon.json (we hold its lock).
            patterns = [temp_glob(self.home.run_dir / PROGRESS_FILE)] + (
                [temp_glob(self.home.daemon_file)] if when == "started" else [])
            stale = [p for pattern in patterns for p in self.home.run_dir.glob(pattern)]
            for path in stale:
                path.unlink(missing_ok=True)
                log.info("removed %s, left by a process that was killed while writing it", path)
        finally:
            lock.release()
        if rec.anything:
            log.warning("recovered (%s): rounds %s -> %s, versions rejected %s, requests reopened %s, "
                        "removed %d leftover path(s)", when, list(rec.rounds), outcome, list(rec.rejected_versions),
                        list(rec.reopened_requests), len(rec.removed_paths))
            self._store.log_event(EVENT_RECOVERED, actor="locftd", payload={
                "when": when, "rounds": list(rec.rounds), "outcome": outcome,
                "rejected_versions": list(rec.rejected_versions), "reopened_requests": list(rec.reopened_requests),
                "removed": [str(p) for p in rec.removed_paths],
            })

    # ---- scheduling -------------------------------------------------------------------------

    def _start_scheduler(self, previous_start: datetime | None) -> None:
        sched = self.config.schedule
        self._triggers.start_scheduler(sched, self._poll, self._on_job_event)
        if sched.cron is not None:
            last_cron = next((r.started_at for r in self._store.list_rounds(limit=200) if r.trigger == "cron"), None)
            missed = missed_cron_run(sched.cron, now_local(), sched.misfire_grace_seconds, last_cron, previous_start)
            if missed is not None:
                log.warning("the scheduled round of %s was missed while locftd was down: running it now",
                            missed.isoformat(timespec="minutes"))
                self._triggers.add("cron")

    def _on_job_event(self, event: Any) -> None:
        # aliased: this module's EVENT_JOB_MISSED is the audit log's kind, not APScheduler's code
        from apscheduler.events import EVENT_JOB_ERROR
        from apscheduler.events import EVENT_JOB_MISSED as JOB_MISSED

        if event.code == EVENT_JOB_ERROR:
            log.error("scheduler job %s failed: %r", event.job_id, event.exception,
                      exc_info=(type(event.exception), event.exception, event.exception.__traceback__))
            return
        what = "missed its run time" if event.code == JOB_MISSED else "was still running"
        # a missed run is a JobExecutionEvent (scheduled_run_time); "still running" (max instances)
        # a JobSubmissionEvent (scheduled_run_times)
        when = getattr(event, "scheduled_run_time", None) or ", ".join(
            str(t) for t in getattr(event, "scheduled_run_times", None) or ())
        log.warning("scheduler job %s %s (scheduled %s)", event.job_id, what, when)
        if event.job_id == "cron":
            try:
                self._store.log_event(EVENT_JOB_MISSED, actor="locftd",
                                      payload={"job": event.job_id, "scheduled": str(when), "why": what})
            except Exception:  # noqa: BLE001
                log.exception("could not log the missed job")

    def _poll(self) -> None:
        """Scheduler thread: cheap queries only; the main thread decides and runs."""
        store = self._store
        if store.open_round_requests():
            self._triggers.add("request")
        threshold = self.config.schedule.min_pending_facts
        if threshold is not None and store.count_facts().pending >= threshold:
            self._triggers.add("pending")
        self._write_info()

    def _write_info(self) -> None:
        next_at = self._triggers.next_cron_at()
        try:
            write_daemon_info(self.home, DaemonInfo(
                pid=os.getpid(), started_at=self.started_at.isoformat(), next_round_at=next_at,
                api_url=self._api.url if self._api is not None else None,
                serving_error=self._api.app.watcher.last_error if self._api is not None and self._api.app.watcher
                else None,
            ))
        except OSError as exc:
            log.warning("could not write %s: %s", self.home.daemon_file, exc)

    # ---- rounds -----------------------------------------------------------------------------

    def _handle(self, trigger: Trigger) -> None:
        from locft.rounds.plan import plan_round, record_skipped

        holder = round_lock(self.home.run_dir).holder()
        if holder is not None:
            if not self._busy_logged:
                log.info("a round is running in pid %s (a foreground `locft round run`?): %s round waits",
                         holder, trigger)
                self._busy_logged = True
            self._triggers.add_later(trigger, BUSY_RETRY_S)
            return
        self._busy_logged = False
        store = self._store
        claimed = store.claim_round_request()
        if claimed is not None:
            self._claimed = tuple(sorted(set(self._claimed) | set(claimed.ids)))
        if self._claimed:
            trigger = "request"  # one round answers the requests and whatever else fired
        automatic = trigger in ("cron", "pending")
        try:
            plan = plan_round(store, self.config, trigger,
                              avoid_digest=self._failed_digest if automatic else None)
        except LocftError as exc:
            log.error("cannot plan a %s round: %s", trigger, exc)
            return
        if not plan.should_run:
            if trigger == "pending":
                log.debug("pending trigger: %s", plan.decision.reason)
            else:
                record_skipped(store, trigger, plan.decision.reason, actor="locftd",
                               request_ids=self._claimed)
                self._claimed = ()
            return
        self._run_worker(trigger, plan.digest)

    def _worker_command(self, trigger: str) -> list[str]:
        cmd = [sys.executable, "-m", "locft.daemon.worker", "--home", str(self.home.root), "--trigger", trigger,
               "--actor", "locftd", "--parent-pid", str(os.getpid())]
        if self._claimed:
            cmd += ["--request-ids", ",".join(str(i) for i in self._claimed)]
        if self.foreground:
            cmd.append("--log-stderr")
        return cmd

    def _run_worker(self, trigger: Trigger, digest: str) -> None:
        env = dict(os.environ, LOCFT_HOME=str(self.home.root))
        cmd = self._worker_command(trigger)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, close_fds=True)
        self._worker = _Worker(proc, trigger, digest, self._claimed, time.monotonic())
        log.info("%s round: worker pid %d started", trigger, proc.pid)
        timeout = self.config.schedule.round_timeout_seconds
        timed_out = False
        while proc.poll() is None:
            if self._stop.is_set():
                return  # _shutdown stops it and records the round
            if time.monotonic() - self._worker.started > timeout:
                timed_out = True
                self._stop_worker(f"the round exceeded schedule.round_timeout_seconds = {timeout}")
                break
            self._stop.wait(TICK_S)
        self._after_worker(stopping=False, timed_out=timed_out)

    def _stop_worker(self, why: str) -> None:
        worker = self._worker
        if worker is None or worker.proc.poll() is not None:
            return
        log.warning("stopping worker pid %d: %s", worker.proc.pid, why)
        try:
            worker.proc.send_signal(signal.SIGTERM)
            worker.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not stop within %.0f s: killing it", worker.proc.pid, STOP_GRACE_S)
            worker.proc.kill()
            worker.proc.wait()
        except ProcessLookupError:
            pass

    def _after_worker(self, *, stopping: bool, timed_out: bool = False) -> None:
        from locft.daemon.worker import EXIT_BUSY, EXIT_OK

        worker, self._worker = self._worker, None
        if worker is None:
            return
        rc = worker.proc.wait()
        seconds = time.monotonic() - worker.started
        if rc == EXIT_BUSY:
            log.info("worker found the round lock taken; the %s round is retried", worker.trigger)
            self._triggers.add_later(worker.trigger, BUSY_RETRY_S)
            return
        self._claimed = ()  # the round started (and linked its requests) or its requests are reopened
        if rc != EXIT_OK or timed_out:
            why = describe_exit(rc)
            if timed_out:
                why = f"timed out after {seconds:.0f} s (schedule.round_timeout_seconds); {why}"
            outcome: Literal["interrupted", "failed"] = "interrupted" if stopping else "failed"
            log.error("the %s round's worker ended abnormally (%s) after %.1f s", worker.trigger, why, seconds)
            self._recover("worker ended", outcome=outcome, error=f"worker {why}")
            if not stopping:
                if worker.trigger in ("cron", "pending"):
                    self._failed_digest = worker.digest
                try:
                    self._store.log_event(EVENT_WORKER_FAILED, actor="locftd", payload={
                        "pid": worker.proc.pid, "why": why, "trigger": worker.trigger, "seconds": round(seconds, 1),
                    })
                except Exception:  # noqa: BLE001
                    log.exception("could not log the worker failure")
        else:
            last = self._store.last_round()
            if last is not None:
                log.info("round %d (%s) ended: %s%s in %.1f s", last.id, last.trigger, last.outcome,
                         f", version {last.version_id}" if last.version_id is not None else "", seconds)
                if last.outcome == "failed" and worker.trigger in ("cron", "pending"):
                    self._failed_digest = worker.digest
                elif last.outcome in ("promoted", "candidate", "rejected"):
                    self._failed_digest = None
                if last.outcome == "promoted" and self._api is not None and self._api.app.watcher is not None:
                    self._api.app.watcher.poke()  # serve the new version now, not at the next poll
        self._write_info()
