"""Schedule policy as a table: trigger, counts and digests in, decision out."""

from __future__ import annotations

from typing import Any

import pytest

from locft.config import ScheduleConfig
from locft.policies.schedule import RoundDecision, decide_round

NIGHTLY = ScheduleConfig()  # cron at 02:00, pending trigger off
EAGER = ScheduleConfig(min_pending_facts=5)
NO_CRON = ScheduleConfig(cron=None, min_pending_facts=5)

# (id, trigger, pending, active, promoted, schedule, extra kwargs, run, reason fragment)
TABLE: list[tuple[str, str, int, str, str | None, ScheduleConfig, dict[str, Any], bool, str]] = [
    # cron
    ("cron with a change", "cron", 3, "B", "A", NIGHTLY, {}, True, "scheduled round (cron '0 2 * * *'): 3 pending"),
    ("cron, no change", "cron", 0, "A", "A", NIGHTLY, {"promoted_version": 4}, False, "no change since version 4"),
    ("cron, no change, version unknown", "cron", 0, "A", "A", NIGHTLY, {}, False,
     "no change since the promoted version"),
    ("cron, first facts", "cron", 2, "A", None, NIGHTLY, {}, True, "scheduled round"),
    ("cron, nothing ever added", "cron", 0, "E", None, NIGHTLY, {}, False, "no facts to learn yet"),
    ("cron, cron switched off", "cron", 9, "B", "A", NO_CRON, {}, False, "cron trigger is off"),
    ("cron, retraction only (digest moved)", "cron", 0, "B", "A", NIGHTLY, {}, True, "scheduled round"),
    # pending
    ("pending trigger off", "pending", 100, "B", "A", NIGHTLY, {}, False, "pending-facts trigger is off"),
    ("pending below threshold", "pending", 4, "B", "A", EAGER, {}, False, "4 pending fact(s), fewer than"),
    ("pending exactly at threshold", "pending", 5, "B", "A", EAGER, {}, True, "5 pending fact(s) reached"),
    ("pending above threshold", "pending", 50, "B", "A", EAGER, {}, True, "reached schedule.min_pending_facts = 5"),
    ("pending reached, no change", "pending", 5, "A", "A", EAGER, {"promoted_version": 2}, False,
     "no change since version 2"),
    ("pending, first facts", "pending", 5, "A", None, EAGER, {}, True, "reached"),
    # request / manual: run when there is a change, whatever the schedule
    ("request with a change", "request", 1, "B", "A", NIGHTLY, {}, True, "round requested: 1 pending"),
    ("request, no change", "request", 0, "A", "A", NIGHTLY, {"promoted_version": 7}, False,
     "no change since version 7"),
    ("request, cron off", "request", 1, "B", "A", NO_CRON, {}, True, "round requested"),
    ("request forced, no change", "request", 0, "A", "A", NIGHTLY, {"force": True, "promoted_version": 7},
     True, "request round forced (no change since version 7)"),
    ("manual with a change", "manual", 1, "B", "A", NIGHTLY, {}, True, "manual round: 1 pending"),
    ("manual, no change", "manual", 0, "A", "A", NIGHTLY, {}, False, "no change since"),
    ("manual forced, no change", "manual", 0, "A", "A", NIGHTLY, {"force": True}, True, "manual round forced"),
    ("manual forced, with a change", "manual", 3, "B", "A", NIGHTLY, {"force": True}, True, "manual round forced"),
    ("manual forced, nothing ever added", "manual", 0, "E", None, NIGHTLY, {"force": True}, True,
     "forced (no facts to learn yet)"),
    # the exact fact set that was just rejected: automatic triggers wait, people may retry
    ("cron, same facts as rejected candidate", "cron", 3, "B", "A", NIGHTLY,
     {"rejected_digest": "B", "rejected_version": 5}, False, "facts unchanged since version 5 was rejected"),
    ("pending, same facts as rejected candidate", "pending", 5, "B", "A", EAGER,
     {"rejected_digest": "B"}, False, "since the last candidate was rejected"),
    ("cron, facts moved on since rejection", "cron", 4, "C", "A", NIGHTLY, {"rejected_digest": "B"}, True, "scheduled"),
    ("request retries a rejected fact set", "request", 3, "B", "A", NIGHTLY, {"rejected_digest": "B"}, True,
     "round requested"),
]


@pytest.mark.parametrize("trigger, pending, active, promoted, schedule, extra, run, reason",
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_decision_table(trigger: str, pending: int, active: str, promoted: str | None, schedule: ScheduleConfig,
                        extra: dict[str, Any], run: bool, reason: str) -> None:
    decision = decide_round(trigger, pending, active, promoted, schedule, **extra)  # type: ignore[arg-type]
    assert isinstance(decision, RoundDecision)
    assert decision.should_run is run
    assert reason in decision.reason


@pytest.mark.parametrize(
    "trigger, pending, force",
    [("nightly", 1, False), ("cron", -1, False), ("cron", 1, True), ("pending", 9, True)],
)
def test_invalid_calls_are_errors(trigger: str, pending: int, force: bool) -> None:
    with pytest.raises(ValueError):
        decide_round(trigger, pending, "B", "A", EAGER, force)  # type: ignore[arg-type]
