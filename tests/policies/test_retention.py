"""Retention as a table: versions and pointer history in, snapshots to delete out."""

from __future__ import annotations

import pytest

from locft.config import StoreConfig
from locft.policies.retention import RetentionCandidate, plan_retention


def versions(spec: str) -> list[RetentionCandidate]:
    """'1P 2T 3R 4C 5x' -> id + state letter (Promoted reTired Rejected Candidate); x: no snapshot."""
    states = {"P": "promoted", "T": "retired", "R": "rejected", "C": "candidate"}
    out = []
    for item in spec.split():
        vid, code = int(item[:-1]), item[-1]
        out.append(RetentionCandidate(vid, states.get(code, "retired"), has_snapshot=code != "x"))
    return out


@pytest.mark.parametrize(
    "spec, history, keep_promoted, keep_rejected, delete",
    [
        # nothing to do
        ("1P", [0, 1], 5, 3, []),
        # retired beyond the last K promoted go; version 0 (no snapshot) is never listed
        ("1T 2T 3T 4P", [0, 1, 2, 3, 4], 2, 3, [1, 2]),
        ("1T 2T 3T 4P", [0, 1, 2, 3, 4], 5, 3, []),
        # keep_promoted counts the current one: K=1 keeps only it
        ("1T 2T 3P", [0, 1, 2, 3], 1, 0, [1, 2]),
        # recency of promotion, not of creation: 1 was promoted again last (by rollback), then 3
        ("1T 2T 3P", [0, 1, 2, 1, 3], 2, 0, [2]),
        # the promoted one is kept even when K would not reach it (it was promoted long ago)
        ("1P 2T 3T", [0, 1], 1, 0, [2, 3]),
        # the newest keep_rejected rejected stay
        ("1R 2R 3R 4R 5P", [0, 5], 5, 2, [1, 2]),
        ("1R 2R 3P", [0, 3], 5, 0, [1, 2]),
        # candidates stay (waiting for gates or a manual promotion)
        ("1C 2C 3P 4C", [0, 3], 1, 0, []),
        # already deleted snapshots are not deleted again
        ("1x 2T 3P", [0, 1, 2, 3], 1, 0, [2]),
    ],
)
def test_plan_retention(spec: str, history: list[int], keep_promoted: int, keep_rejected: int,
                        delete: list[int]) -> None:
    plan = plan_retention(versions(spec), history,
                          StoreConfig(keep_promoted=keep_promoted, keep_rejected=keep_rejected))
    assert list(plan.delete) == delete
    promoted = [v.version_id for v in versions(spec) if v.state == "promoted"]
    assert not set(promoted) & set(plan.delete)
    assert set(plan.keep).isdisjoint(plan.delete)
    with_files = {v.version_id for v in versions(spec) if v.has_snapshot}
    assert set(plan.keep) | set(plan.delete) == with_files  # every snapshot gets a decision
