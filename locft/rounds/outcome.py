"""How a round ended: its outcome, gate verdict, timings and losses (what shells and logs show)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from locft.policies.gating import GateMetrics, Verdict
from locft.store.rounds import RoundOutcome


@dataclass
class RoundResult:
    """How a round ended. `outcome` 'candidate': gates passed, waiting for `locft promote`."""

    outcome: RoundOutcome
    reason: str
    round_id: int | None
    trigger: str
    version_id: int | None = None
    promoted_version_id: int | None = None  # the pointer after the round
    n_facts: int = 0
    fact_set_digest: str = ""
    verdict: Verdict | None = None
    metrics: GateMetrics | None = None
    timings: dict[str, float] = field(default_factory=dict)
    loss_per_epoch: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "reason": self.reason, "round_id": self.round_id, "trigger": self.trigger,
            "version_id": self.version_id, "promoted_version_id": self.promoted_version_id,
            "n_facts": self.n_facts, "fact_set_digest": self.fact_set_digest,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "timings": self.timings, "loss_per_epoch": self.loss_per_epoch, "error": self.error,
        }


def describe(result: RoundResult) -> str:
    """One line for shells and logs."""
    parts = [f"round {result.round_id}: {result.outcome}"]
    if result.version_id is not None:
        parts.append(f"version {result.version_id}")
    parts.append(result.reason)
    if result.timings.get("total") is not None:
        parts.append(f"{result.timings['total']:.1f} s")
    return " | ".join(parts)
