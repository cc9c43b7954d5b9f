"""What a `locft locate` sweep measured: one result per candidate, the report, its note."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any

from locft.policies.location import CandidateScore, Selection

# `locft locate --write` refuses to record a pick when even the winner learned fewer of the
# sampled edits than this: the sweep then compared locations that did not edit anything.
MIN_RELIABILITY_TO_RECORD = 0.5


@dataclass
class CandidateResult:
    """One location's numbers (None = not measured)."""

    location: str  # EditLocation.describe(), e.g. model.layers.8.mlp.down_proj.weight
    template: str
    layers: tuple[int, ...]
    current: bool = False  # the location the config resolves to now
    reliability: float | None = None
    generalization: float | None = None
    locality: float | None = None  # token-level
    locality_exact: float | None = None
    capability: dict[str, float] = field(default_factory=dict)
    capability_drop: float | None = None  # worst task, gate convention
    epochs: int = 0
    final_loss: float | None = None
    converged: bool = False
    train_seconds: float = 0.0  # activation cache + training
    eval_seconds: float = 0.0  # generation + token locality + capability
    error: str | None = None

    def score(self) -> CandidateScore:
        return CandidateScore(self.location, self.reliability, self.generalization, self.locality,
                              self.capability_drop, self.error)


@dataclass
class LocateReport:
    candidates: list[CandidateResult]
    selection: Selection
    settings: dict[str, Any]
    edit: dict[str, Any]  # the recipe every candidate used (lr, batch size, prompt format, ...)
    model: dict[str, Any]  # source, fingerprint, architecture
    n_facts: int  # available
    n_sample: int
    n_probes: int
    base_capability: dict[str, float]
    warnings: list[str]
    seconds: float

    @property
    def winner(self) -> CandidateResult | None:
        i = self.selection.winner
        return None if i is None else self.candidates[i]

    def why_not_recordable(self) -> str | None:
        """None when the pick may be written to locft.toml, else the reason it may not."""
        w = self.winner
        if w is None:
            return "no location qualified (every candidate failed)"
        if w.reliability is None or w.reliability < MIN_RELIABILITY_TO_RECORD:
            return (f"the chosen location learned only {_f(w.reliability)} of the sampled edits "
                    f"(< {MIN_RELIABILITY_TO_RECORD}): the sweep compared locations that edited "
                    f"nothing; raise --epochs (or edit.lr) and run again")
        return None

    def to_dict(self) -> dict[str, Any]:
        def safe(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, dict):
                return {k: safe(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [safe(x) for x in v]
            return v

        return safe({
            "winner": self.winner.location if self.winner else None,
            "winner_template": self.winner.template if self.winner else None,
            "winner_layers": list(self.winner.layers) if self.winner else None,
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
            "selection": self.selection.to_dict(),
            "settings": self.settings, "edit": self.edit, "model": self.model,
            "n_facts": self.n_facts, "n_sample": self.n_sample, "n_probes": self.n_probes,
            "base_capability": self.base_capability, "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
        })



def note_for(report: LocateReport) -> str:
    """The one-line comment recorded above the location: when, on what, with which numbers."""
    w = report.winner
    assert w is not None
    today = _dt.date.today().isoformat()
    others = [",".join(map(str, c.layers)) if c.layers else c.location for c in report.candidates]
    nums = [f"reliability {_f(w.reliability)}", f"locality {_f(w.locality)}",
            f"generalization {_f(w.generalization)}"]
    if w.capability_drop is not None:
        nums.insert(0, f"capability drop {_f(w.capability_drop)}")
    return (f"{today}, {report.n_sample} facts x {report.settings['epochs']} epochs, "
            f"candidates {'; '.join(others)}: " + ", ".join(nums))


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
