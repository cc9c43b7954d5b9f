"""What asks the daemon for a round, and in which order the main thread takes the asks.

APScheduler's thread only *adds* a trigger here (cron, the poll's requests and pending facts,
a retry after the round lock was busy): a job never blocks, so a long round cannot make the
scheduler miss or pile up runs. Triggers are a set, so those that arrive during a round are
coalesced into one; the main thread takes them one at a time, highest priority first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from locft.config import ScheduleConfig
from locft.errors import DaemonError

if TYPE_CHECKING:
    from locft.policies.schedule import Trigger

log = logging.getLogger(__name__)

# Higher first: an explicit request outranks a schedule (and answers it: one round, all facts).
PRIORITY = {"request": 0, "cron": 1, "pending": 2}


def now_local() -> datetime:
    return datetime.now().astimezone()


def missed_cron_run(
    cron: str, now: datetime, grace_s: float, last_cron_round: datetime | None, previous_start: datetime | None
) -> datetime | None:
    """The latest cron time within the misfire grace that no cron round answered, if a previous
    daemon was running before it (a brand-new home does not catch up on yesterday's schedule)."""
    from apscheduler.triggers.cron import CronTrigger

    if previous_start is None:
        return None
    trigger = CronTrigger.from_crontab(cron, timezone=now.tzinfo)
    t = trigger.get_next_fire_time(None, now - timedelta(seconds=grace_s))
    last: datetime | None = None
    while t is not None and t <= now:
        last = t
        t = trigger.get_next_fire_time(t, t + timedelta(seconds=1))
    if last is None or previous_start > last:
        return None
    if last_cron_round is not None and last_cron_round >= last:
        return None
    return last


class Triggers:
    """The pending triggers and the scheduler (APScheduler 3) that adds the timed ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[Trigger] = set()
        self._scheduler: Any = None

    def add(self, trigger: Trigger) -> None:
        with self._cond:
            if trigger not in self._pending:
                log.info("%s trigger queued", trigger)
            self._pending.add(trigger)
            self._cond.notify_all()

    def add_later(self, trigger: Trigger, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self.add, args=[trigger])
        timer.daemon = True
        timer.start()

    def take(self, timeout: float, stop: threading.Event) -> Trigger | None:
        """The highest-priority trigger, waiting up to `timeout`; None once `stop` is set."""
        with self._cond:
            if not self._pending and not stop.is_set():
                self._cond.wait(timeout)
            if not self._pending or stop.is_set():
                return None
            trigger = min(self._pending, key=lambda t: PRIORITY.get(t, 9))
            self._pending.discard(trigger)
            return trigger

    def wake(self) -> None:
        """Return from a `take` that is waiting (the daemon is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def start_scheduler(self, sched: ScheduleConfig, poll: Callable[[], None],
                        on_job_event: Callable[[Any], None]) -> None:
        """Cron (local time, coalesced, misfire grace) adds "cron"; `poll` runs at once and then
        every poll_seconds; `on_job_event` hears of missed, overlapping and failed jobs."""
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        tz = now_local().tzinfo
        self._scheduler = scheduler = BackgroundScheduler(
            timezone=tz,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": sched.misfire_grace_seconds},
        )
        scheduler.add_listener(on_job_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        if sched.cron is not None:
            try:
                trigger = CronTrigger.from_crontab(sched.cron, timezone=tz)
            except ValueError as exc:
                raise DaemonError(f"schedule.cron {sched.cron!r} is not a valid cron expression: {exc}") from None
            scheduler.add_job(self.add, trigger, args=["cron"], id="cron", name="scheduled round",
                              replace_existing=True)
        # The poll runs at once and then every poll_seconds; its own grace is one period (a poll
        # that is late by more is simply superseded by the next one).
        scheduler.add_job(poll, IntervalTrigger(seconds=sched.poll_seconds, timezone=tz), id="poll",
                          name="requests and pending facts", next_run_time=now_local(),
                          misfire_grace_time=max(1, int(sched.poll_seconds)), replace_existing=True)
        scheduler.start()

    def next_cron_at(self) -> str | None:
        """When the scheduled round runs next (ISO 8601), None without a cron schedule."""
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job("cron")
        if job is None or job.next_run_time is None:
            return None
        return str(job.next_run_time.isoformat())

    def shutdown(self) -> None:
        if self._scheduler is None:
            return
        try:
            self._scheduler.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - not running
            pass
