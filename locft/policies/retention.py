"""Which snapshot directories may be deleted. Pure: versions and history in, a plan out.

Rules (StoreConfig.keep_promoted / keep_rejected):
- the promoted version's snapshot is never deleted;
- the snapshots of the last `keep_promoted` distinct promoted versions (the current one
  included, most recently promoted first) are kept, so that rollback can reach them;
- retired versions (promoted once) beyond those are deleted;
- the newest `keep_rejected` rejected versions are kept for inspection, older ones deleted;
- candidates (not gated yet, or passed and waiting for promotion) are kept.
Versions are trained from the base weights, never from their parent's snapshot, so no
snapshot is needed to rebuild another. Deleting files never deletes rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from locft.config import StoreConfig


@dataclass(frozen=True)
class RetentionCandidate:
    """What the policy needs to know about one version."""

    version_id: int
    state: str  # candidate / promoted / rejected / retired
    has_snapshot: bool  # a snapshot directory exists (False for version 0 or already deleted)


@dataclass(frozen=True)
class RetentionPlan:
    delete: tuple[int, ...]  # version ids whose snapshot directories go
    keep: dict[int, str] = field(default_factory=dict)  # version id -> why it stays


def plan_retention(
    versions: Iterable[RetentionCandidate],
    promotion_history: Sequence[int],
    config: StoreConfig,
) -> RetentionPlan:
    """Decide which snapshots to delete.

    `promotion_history`: the version ids the promoted pointer was moved to, oldest first
    (promotions and rollbacks alike).
    """
    with_files = sorted((v for v in versions if v.has_snapshot), key=lambda v: v.version_id, reverse=True)
    recent_promoted: list[int] = []
    for version_id in reversed(promotion_history):
        if version_id not in recent_promoted:
            recent_promoted.append(version_id)
    rollback_set = set(recent_promoted[: config.keep_promoted])

    keep: dict[int, str] = {}
    delete: list[int] = []
    rejected_kept = 0
    for v in with_files:  # newest first, so "the newest K rejected" is a running count
        if v.state == "promoted":
            keep[v.version_id] = "promoted"
        elif v.version_id in rollback_set:
            keep[v.version_id] = f"one of the last {config.keep_promoted} promoted (rollback)"
        elif v.state == "rejected":
            if rejected_kept < config.keep_rejected:
                rejected_kept += 1
                keep[v.version_id] = f"one of the newest {config.keep_rejected} rejected"
            else:
                delete.append(v.version_id)
        elif v.state == "retired":
            delete.append(v.version_id)
        else:
            keep[v.version_id] = "candidate"
    return RetentionPlan(tuple(sorted(delete)), keep)
