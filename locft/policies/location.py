"""Which edit location a `locft locate` sweep picks: a pure function of measured numbers.

The LocFT-BF paper's priority for choosing where to fine-tune: keep the model's general
capability first, then locality (unrelated answers unchanged), then generalization
(paraphrases). Applied to a sweep's candidates, in this order:

1. learned: a candidate whose training failed, or whose numbers are NaN, is out; so is one
   whose reliability is more than `tolerances.reliability` below the best candidate's (it did
   not learn the sample in the sweep's epoch budget, so its locality says nothing);
2. capability: keep those whose capability drop vs the base model is within
   `tolerances.capability` of the smallest drop (skipped when capability was not measured);
3. locality: of those, keep the ones within `tolerances.locality` of the best token locality
   (skipped when there were no probes);
4. generalization: of those, the highest generalization wins; exact ties go to the higher
   locality, then the smaller capability drop, then the earlier candidate.

Decides, never measures: no torch, no store (`locft.locate` measures). The location a round
trains at is chosen by `locft.engine.targets.choose_edit_location`, which reads a pick that
`locft locate --write` recorded in locft.toml before anything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from locft.errors import ConfigError
from locft.policies.gating import EPSILON, fmt


@dataclass(frozen=True)
class LocateTolerances:
    """How close to the best a candidate must be to count as "as good" at each priority level.

    All three are absolute differences in the measure's own units.
    """

    # Share of the sample's edit prompts answered with the new answer. A location that learns
    # noticeably fewer edits than the best one is not compared further: with fewer changed
    # answers its locality would look better for the wrong reason.
    reliability: float = 0.10
    # Capability drop vs the base model, in the gate's units (base - candidate for accuracies,
    # candidate - base for bits per byte; the worst task counts). 0.01 is 1% of the embedded
    # model's ~1.04 bits per byte (docs/experiments/quality/locate_embedded.md), far above the
    # paired noise of 50 passages (an earlier run, not kept, put a +0.3% change at ~6 standard
    # errors), and half an item at 50 accuracy items.
    capability: float = 0.01
    # Token-level locality on the probe prompts. Layers of the embedded model differed by up to
    # 0.17 here (docs/experiments/quality/locate_embedded.md: 0.56 at layer 15 to 0.73 at layer
    # 22), so 0.02 only merges near-ties, which generalization then breaks.
    locality: float = 0.02

    def __post_init__(self) -> None:
        for name in ("reliability", "capability", "locality"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1) or math.isnan(value):
                raise ConfigError(f"locate tolerance {name} must be within [0, 1], got {value!r}")


@dataclass(frozen=True)
class CandidateScore:
    """A candidate's measured numbers; None = not measured (no probes, no paraphrases, no tasks)."""

    name: str
    reliability: float | None
    generalization: float | None = None
    locality: float | None = None
    capability_drop: float | None = None  # worst task; smaller is better; may be negative
    error: str | None = None  # training or measuring failed: never chosen


@dataclass
class Selection:
    """The pick (index into the candidates, None when none qualified) and why."""

    winner: int | None
    # per candidate: "chosen", or the first priority level that put it out and the numbers
    status: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # one sentence per priority level applied

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bad(value: float | None) -> bool:
    return value is not None and math.isnan(value)


def select_from_sweep(scores: Sequence[CandidateScore], tolerances: LocateTolerances | None = None) -> Selection:
    """Apply the paper's priority (module docstring) to the candidates' numbers."""
    tol = tolerances or LocateTolerances()
    status = ["" for _ in scores]
    steps: list[str] = []
    alive: list[int] = []
    for i, s in enumerate(scores):
        if s.error:
            status[i] = f"failed: {s.error}"
        elif any(_bad(v) for v in (s.reliability, s.generalization, s.locality, s.capability_drop)):
            status[i] = "failed: a measurement is nan"
        elif s.reliability is None:
            status[i] = "failed: reliability was not measured"
        else:
            alive.append(i)
    if not alive:
        steps.append("no candidate was measured successfully")
        return Selection(None, status, steps)

    # 1. it must have learned the edits
    rels = {i: r for i in alive if (r := scores[i].reliability) is not None}  # every one alive
    best_rel = max(rels.values())
    floor = best_rel - tol.reliability
    kept = [i for i in alive if rels[i] + EPSILON >= floor]
    for i in alive:
        if i not in kept:
            status[i] = f"did not learn the edits: reliability {fmt(scores[i].reliability)} < {fmt(floor)}"
    steps.append(f"reliability: best {fmt(best_rel)}; kept {len(kept)} of {len(alive)} within "
                 f"{fmt(tol.reliability)} of it")
    alive = kept

    # 2. general capability first
    drops = {i: d for i in alive if (d := scores[i].capability_drop) is not None}
    if len(drops) == len(alive):
        best_drop = min(drops.values())
        ceiling = best_drop + tol.capability
        kept = [i for i in alive if drops[i] <= ceiling + EPSILON]
        for i in alive:
            if i not in kept:
                status[i] = (f"capability: drop {fmt(scores[i].capability_drop)} > best "
                             f"{fmt(best_drop)} + {fmt(tol.capability)}")
        steps.append(f"capability: smallest drop {fmt(best_drop)}; kept {len(kept)} of {len(alive)} within "
                     f"{fmt(tol.capability)} of it")
        alive = kept
    elif drops:
        # Some measured, some not: comparing would favour the unmeasured ones. Treat as unknown.
        steps.append("capability: not measured for every candidate; not compared")
    else:
        steps.append("capability: not measured; not compared")

    # 3. then locality
    locs = {i: v for i in alive if (v := scores[i].locality) is not None}
    if len(locs) == len(alive):
        best_loc = max(locs.values())
        floor = best_loc - tol.locality
        kept = [i for i in alive if locs[i] + EPSILON >= floor]
        for i in alive:
            if i not in kept:
                status[i] = f"locality: {fmt(scores[i].locality)} < best {fmt(best_loc)} - {fmt(tol.locality)}"
        steps.append(f"locality: best {fmt(best_loc)}; kept {len(kept)} of {len(alive)} within "
                     f"{fmt(tol.locality)} of it")
        alive = kept
    else:
        steps.append("locality: not measured for every candidate; not compared")

    # 4. then generalization; exact ties: locality, smaller capability drop, candidate order
    def key(i: int) -> tuple[float, float, float, int]:
        s = scores[i]
        return (
            s.generalization if s.generalization is not None else -1.0,
            s.locality if s.locality is not None else -1.0,
            -(s.capability_drop if s.capability_drop is not None else 0.0),
            -i,
        )

    winner = max(alive, key=key)
    for i in alive:
        if i == winner:
            continue
        mine, best = key(i), key(winner)
        s, w = scores[i], scores[winner]
        if mine[0] < best[0]:
            status[i] = (f"generalization: {fmt(s.generalization)} < {fmt(w.generalization)} "
                         f"(tied on the levels above)")
        elif mine[1] < best[1]:
            status[i] = f"tied: same generalization, locality {fmt(s.locality)} < {fmt(w.locality)}"
        elif mine[2] < best[2]:
            status[i] = (f"tied: same generalization and locality, capability drop "
                         f"{fmt(s.capability_drop)} > {fmt(w.capability_drop)}")
        else:
            status[i] = "tied: the same numbers; the earlier candidate is chosen"
    status[winner] = "chosen"
    gens = {scores[i].generalization for i in alive}
    if len(alive) == 1:
        steps.append("generalization: one candidate left")
    elif gens == {None}:
        steps.append("generalization: not measured (no paraphrases); ties broken by locality")
    else:
        steps.append(f"generalization: {fmt(scores[winner].generalization)} is the best of the "
                     f"{len(alive)} left")
    return Selection(winner, status, steps)
