"""Schedule policy: is a round due now? Pure function of counts and digests (no scheduler, no store).

The daemon asks on every trigger; the answer is a `RoundDecision(should_run, reason)` whose reason is a
sentence fit for the event log ("no change since version 3").

Triggers:
- "cron": the schedule's time came (only when `schedule.cron` is set);
- "pending": the poller saw pending facts (only when `schedule.min_pending_facts` is set and reached);
- "request": someone asked for a round (API, `locft round request`);
- "manual": a foreground `locft round run`.

Every trigger skips a round when the active fact set is the one the promoted version was trained on
(same digest): it would rebuild the same version. With `force`, an explicit trigger (request,
manual) runs anyway, e.g. after a config change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from locft.config import ScheduleConfig

Trigger = Literal["cron", "pending", "request", "manual"]
TRIGGERS: tuple[str, ...] = get_args(Trigger)
EXPLICIT_TRIGGERS = frozenset({"request", "manual"})  # a person asked: force is allowed


@dataclass(frozen=True)
class RoundDecision:
    should_run: bool
    reason: str


def _version(promoted_version: int | None) -> str:
    return f"version {promoted_version}" if promoted_version is not None else "the promoted version"


def decide_round(
    trigger: Trigger,
    pending_facts: int,
    active_digest: str,
    promoted_digest: str | None,
    schedule: ScheduleConfig,
    force: bool = False,
    *,
    promoted_version: int | None = None,
    rejected_digest: str | None = None,
    rejected_version: int | None = None,
) -> RoundDecision:
    """Whether a round should run now.

    - pending_facts: active facts (added, changed or retracted) the promoted version was not
      trained on; with no promoted version, every active fact.
    - active_digest / promoted_digest: digests of the active fact set now and of the set the
      promoted version was trained on (None: nothing promoted yet, only the base model).
    - force: run even without a change; only for explicit triggers ("request", "manual").
    - promoted_version: its number, for the reason sentence.
    - rejected_digest / rejected_version: the newest rejected candidate, if any. Automatic
      triggers do not retrain the exact fact set that was just rejected (training is deterministic,
      it would be rejected again, every night); explicit triggers still may.
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown round trigger {trigger!r}; known: {', '.join(TRIGGERS)}")
    if pending_facts < 0:
        raise ValueError(f"pending_facts must be >= 0, got {pending_facts}")
    if force and trigger not in EXPLICIT_TRIGGERS:
        raise ValueError(f"force is only for explicit triggers (request, manual), not {trigger!r}")

    if promoted_digest is None:
        changed = pending_facts > 0  # only the base model: any active fact is new
        unchanged_reason = "no facts to learn yet"
    else:
        changed = active_digest != promoted_digest
        unchanged_reason = f"no change since {_version(promoted_version)}"

    if force:
        why = "" if changed else f" ({unchanged_reason})"
        return RoundDecision(True, f"{trigger} round forced{why}")

    # Automatic triggers that are switched off never run (a stale job must not train).
    if trigger == "cron" and schedule.cron is None:
        return RoundDecision(False, "cron trigger is off (schedule.cron is not set)")
    if trigger == "pending":
        if schedule.min_pending_facts is None:
            return RoundDecision(False, "pending-facts trigger is off (schedule.min_pending_facts is not set)")
        if pending_facts < schedule.min_pending_facts:
            return RoundDecision(
                False, f"{pending_facts} pending fact(s), fewer than schedule.min_pending_facts = "
                f"{schedule.min_pending_facts}"
            )

    if not changed:
        return RoundDecision(False, unchanged_reason)

    if trigger not in EXPLICIT_TRIGGERS and rejected_digest is not None and rejected_digest == active_digest:
        which = f"version {rejected_version}" if rejected_version is not None else "the last candidate"
        return RoundDecision(
            False, f"facts unchanged since {which} was rejected (request a round to retry)"
        )

    what = {
        "cron": f"scheduled round (cron {schedule.cron!r})",
        "pending": f"{pending_facts} pending fact(s) reached schedule.min_pending_facts = {schedule.min_pending_facts}",
        "request": "round requested",
        "manual": "manual round",
    }[trigger]
    return RoundDecision(True, f"{what}: {pending_facts} pending fact(s)" if trigger != "pending" else what)
