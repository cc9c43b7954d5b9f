"""The round lock, and closing what a killed round left behind (rounds left 'running', ungated
candidates, unrecorded snapshots)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from locft.home import Home
from locft.locks import PidLock, round_lock

if TYPE_CHECKING:
    from locft.store import Store

log = logging.getLogger(__name__)


def reject_ungated(store: Store, version_id: int, round_id: int, why: str, actor: str | None) -> None:
    """A candidate whose gates never finished must never be promotable without --force."""
    if store.gate_results(version_id):
        return
    store.record_gate_result(version_id, passed=False, metrics={},
                             report={"reasons": [f"round {round_id} {why} before its gates finished"],
                                     "abandoned": True},
                             round_id=round_id, actor=actor)


@dataclass(frozen=True)
class RoundRecovery:
    """What `recover_rounds` closed and cleaned."""

    rounds: tuple[int, ...]
    rejected_versions: tuple[int, ...]
    reopened_requests: tuple[int, ...]
    removed_paths: tuple[Path, ...]

    @property
    def anything(self) -> bool:
        return bool(self.rounds or self.rejected_versions or self.reopened_requests or self.removed_paths)


def recover_rounds(
    store: Store, home: Home, *, outcome: Literal["interrupted", "failed"] = "interrupted",
    error: str | None = None, actor: str | None = None,
) -> RoundRecovery:
    """Close rounds left 'running' by a process that is gone. CALL ONLY WHILE HOLDING THE ROUND
    LOCK (then no round is in progress, so everything 'running' is dead).

    Marks them `outcome`, fails the gates of versions they recorded but never gated, reopens
    requests claimed by a round that never started, and removes snapshot directories without a
    row and `.tmp-*` leftovers at once (no minimum age: no writer can be active).
    """
    # also reopens requests claimed by a round that never started
    recovery = store.close_dead_rounds(
        outcome=outcome, actor=actor,
        error=error or ("the process running this round died before it finished" if outcome == "failed" else None))
    ids = list(recovery.undecided_rounds)
    rejected: list[int] = []
    if ids:
        for v in store.list_versions(state="candidate"):
            if v.round_id in ids and not store.gate_results(v.id):
                reject_ungated(store, v.id, v.round_id or 0, "stopped", actor)
                rejected.append(v.id)
    removed = tuple(store.sweep_orphan_snapshots(0.0))
    for rid in ids:
        log.warning("round %d was left running by a process that is gone: recorded as %s", rid, outcome)
    for rid in recovery.decided_rounds:
        log.warning("round %d was left running by a process that died after its gate decision: "
                    "recorded as %s", rid, store.get_round(rid).outcome)
    return RoundRecovery(tuple(ids) + recovery.decided_rounds, tuple(rejected), recovery.released_requests, removed)


@contextmanager
def hold_round_lock(home: Home, store: Store | None = None, *, recover: bool = True) -> Iterator[PidLock]:
    """Hold the home's round lock (LockHeld if a round runs elsewhere); on entry, recover what a
    killed round left behind (safe exactly because we now hold the lock)."""
    lock = round_lock(home.run_dir)
    lock.acquire()
    try:
        if recover and store is not None:
            recover_rounds(store, home)
        yield lock
    finally:
        lock.release()
