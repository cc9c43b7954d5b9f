"""Phase 1 of a round, planning: freeze the active fact set and decide whether a round runs for it.

Cheap (no torch): the daemon asks this before starting a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from locft.config import LocftConfig
from locft.facts import fact_set_digest
from locft.policies.schedule import RoundDecision, Trigger, decide_round

if TYPE_CHECKING:
    from locft.store import FactEntry, Store, VersionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """Phase 1: the frozen fact set and whether a round should run for it."""

    trigger: str
    decision: RoundDecision
    entries: tuple[FactEntry, ...]
    digest: str
    pending: int
    promoted: VersionInfo

    @property
    def should_run(self) -> bool:
        return self.decision.should_run


def plan_round(
    store: Store,
    config: LocftConfig,
    trigger: Trigger,
    *,
    force: bool = False,
    avoid_digest: str | None = None,
) -> RoundPlan:
    """Freeze the active fact set and decide whether a round runs for it.

    `avoid_digest`: a fact set whose last automatic round failed (the daemon remembers it), so
    that automatic triggers do not retry a crashing round in a loop; explicit triggers still may.
    """
    entries = tuple(store.active_facts())
    digest = fact_set_digest(e.fact for e in entries)
    promoted = store.promoted_version()
    pending = store.count_facts().pending
    # Version 0 is "only the base model": decide_round wants None there.
    promoted_digest = None if promoted.id == 0 else promoted.fact_set_digest
    rejected = [v for v in store.list_versions(state="rejected") if v.id > promoted.id]
    rejected_digest = rejected[0].fact_set_digest if rejected else None
    rejected_version = rejected[0].id if rejected else None
    if avoid_digest is not None and avoid_digest == digest:  # decide_round takes one such set
        rejected_digest, rejected_version = avoid_digest, None
    decision = decide_round(
        trigger, pending, digest, promoted_digest, config.schedule, force,
        promoted_version=promoted.id, rejected_digest=rejected_digest, rejected_version=rejected_version,
    )
    return RoundPlan(trigger, decision, entries, digest, pending, promoted)


def record_skipped(
    store: Store, trigger: Trigger, reason: str, *, actor: str | None = None, request_ids: Sequence[int] = ()
) -> int:
    """A round that decided not to train is still recorded (and answers its requests)."""
    info = store.start_round(trigger, actor=actor, request_ids=request_ids)
    store.finish_round(info.id, "skipped", error=reason, actor=actor)
    log.info("round %d skipped: %s", info.id, reason)
    return info.id
