"""Gate policy: measured numbers of a candidate version -> promote or reject, with reasons.

Decides, never measures: pure functions of numbers (no torch, no store). The measuring lives in
`locft.evaluation`; the round wires the two together.

Rules (thresholds from `locft.config.GatePolicy`):

- reliability >= min_reliability (share of active facts the candidate answers with the new answer);
- generalization >= min_generalization, only when that threshold is set (always reported);
- locality >= min_locality, when it was measured (token-level agreement with the base model on
  the probe prompts); exact locality is reported only;
- retention drop (1 - retention) <= max_retention_drop, when there is a promoted version with
  facts to retain;
- for every capability task: drop vs the base model <= max_capability_drop, where the drop is
  base - candidate (candidate - base for tasks whose score improves downwards, e.g. bits per byte).
  A task score missing on either side is a failed check, never a silent pass. With
  `capability_test = "paired"` (the default) and per-item scores for the task, a drop over the
  threshold fails only when it is also significant: a one-sided exact sign test on the items
  whose answer changed (lost: right for the base, wrong for the candidate; gained: the reverse)
  gives p < capability_alpha. Why: an edited 135M model changes about 1 in 10 ARC-Easy answers
  in both directions, so a candidate with no real loss shows a drop over 0.02 on 200 items about
  one round in seven; the sign test holds that chance under alpha. Tasks without per-item scores
  fall back to the point rule and say so (docs/experiments/quality/capability_gate_rules.md).

`None` means "not measured" (an optional gate is then skipped and says so); NaN means the
measurement broke and never passes. A value exactly at its threshold passes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from locft.config import GatePolicy

log = logging.getLogger(__name__)

# Scores are sums of ratios: 1 - 0.98 is 0.020000000000000018. A value "at" the threshold passes.
EPSILON = 1e-9


@dataclass(frozen=True)
class PairedCounts:
    """Base and candidate on the same items of one task: how many answers moved, which way."""

    n_items: int
    lost: int  # right for the base, wrong for the candidate
    gained: int  # wrong for the base, right for the candidate

    def __post_init__(self) -> None:
        if min(self.n_items, self.lost, self.gained) < 0 or self.lost + self.gained > self.n_items:
            raise ValueError(f"impossible paired counts {self}")

    @classmethod
    def from_items(cls, base: Sequence[float], candidate: Sequence[float]) -> PairedCounts:
        """From per-item 0/1 scores of the two models on the same items, in the same order."""
        if len(base) != len(candidate):
            raise ValueError(f"paired items differ in number: base {len(base)}, candidate {len(candidate)}")
        if any(v not in (0.0, 1.0) for v in (*base, *candidate)):
            raise ValueError("paired items must score 0 or 1")
        lost = sum(1 for b, c in zip(base, candidate) if b > c)
        gained = sum(1 for b, c in zip(base, candidate) if c > b)
        return cls(len(base), lost, gained)

    def to_dict(self) -> dict[str, Any]:
        """The counts and their p, for reports (`GateMetrics` stores the counts only)."""
        return {**asdict(self), "p_worse": self.p_worse}

    @property
    def p_worse(self) -> float:
        """One-sided exact sign test: P(at least `lost` of the changed answers were losses) if a
        change were equally likely either way (the candidate no worse than the base)."""
        return sign_test_p(self.lost, self.gained)


def pair_tasks(base: Mapping[str, Sequence[float] | None],
               candidate: Mapping[str, Sequence[float] | None]) -> dict[str, PairedCounts]:
    """`PairedCounts` for every task with per-item scores on both sides. A task whose items do
    not pair (missing, a different count, a score not 0 or 1) is left out: the gate then judges
    it by the point rule and says so."""
    pairs: dict[str, PairedCounts] = {}
    for task, base_items in base.items():
        cand_items = candidate.get(task)
        if base_items is None or cand_items is None:
            continue
        try:
            pairs[task] = PairedCounts.from_items(base_items, cand_items)
        except ValueError as exc:  # the check's line says "point rule"; the log says why
            log.warning("capability %s: no paired comparison: %s", task, exc)
    return pairs


def sign_test_p(lost: int, gained: int) -> float:
    """P(X >= lost) for X ~ Binomial(lost + gained, 1/2); 1.0 when nothing changed."""
    n = lost + gained
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n  # exact integers, one rounding


@dataclass(frozen=True)
class GateMetrics:
    """Everything the gates look at for one candidate version."""

    reliability: float | None  # None only when there is nothing to learn (n_facts == 0)
    n_facts: int
    generalization: float | None = None  # None: no fact has a paraphrase
    locality: float | None = None  # token-level agreement with the base model on probes
    exact_locality: float | None = None  # share of probe answers unchanged (reported only)
    # Share of the facts the promoted version answered correctly that the candidate still answers
    # correctly. None: no promoted version, or it knew none of the still-active facts.
    retention: float | None = None
    n_retained: int | None = None  # the denominator of `retention`
    capability: Mapping[str, float] = field(default_factory=dict)
    base_capability: Mapping[str, float] = field(default_factory=dict)
    # capability tasks whose score improves downwards (see evaluation.capability.lower_is_better)
    capability_lower_is_better: frozenset[str] = frozenset()
    # per task, base vs candidate item by item (tasks with per-item scores only)
    capability_pairs: Mapping[str, PairedCounts] = field(default_factory=dict)
    promoted_version: int | None = None  # only for the wording of reasons

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["capability"] = dict(self.capability)
        data["base_capability"] = dict(self.base_capability)
        data["capability_lower_is_better"] = sorted(self.capability_lower_is_better)
        data["capability_pairs"] = {k: asdict(v) for k, v in self.capability_pairs.items()}
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateMetrics:
        values = dict(data)
        for name in _METRIC_FLOATS:
            if name in values:
                values[name] = _num(values[name])
        values["capability"] = {k: _num(v) for k, v in (values.get("capability") or {}).items()}
        values["base_capability"] = {k: _num(v) for k, v in (values.get("base_capability") or {}).items()}
        values["capability_lower_is_better"] = frozenset(values.get("capability_lower_is_better") or ())
        values["capability_pairs"] = {k: PairedCounts(**v) for k, v in (values.get("capability_pairs") or {}).items()}
        return cls(**values)


@dataclass(frozen=True)
class Check:
    """One gate. `threshold` None: reported only (or skipped, then `detail` says why)."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str
    gated: bool = True  # False: shown for information, cannot fail

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[Check]
    reasons: list[str]  # one sentence per failed check; empty when passed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks], "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        checks = [Check(**{**c, "value": _num(c.get("value")), "threshold": _num(c.get("threshold"))})
                  for c in data.get("checks", [])]
        return cls(passed=bool(data["passed"]), checks=checks, reasons=list(data.get("reasons", [])))

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: stored as the strings "nan"/"inf" so a failed measurement stays failed."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _num(value: Any) -> float | None:
    """Back from JSON: None stays None (not measured), "nan" becomes NaN (measurement failed)."""
    return None if value is None else float(value)


_METRIC_FLOATS = ("reliability", "generalization", "locality", "exact_locality", "retention")


def fmt(value: float | None, decimals: int = 4) -> str:
    """0.91, 0.9499, 0.02: at most `decimals` decimals, no trailing zeros."""
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _fmt_apart(a: float, b: float) -> tuple[str, str]:
    """Both numbers with enough decimals that a failed comparison never reads "0.95 < 0.95"."""
    for decimals in range(4, 10):
        if fmt(a, decimals) != fmt(b, decimals):
            break
    return fmt(a, decimals), fmt(b, decimals)


def _pct(value: float) -> str:
    return f"{fmt(value * 100)}%"


def _at_least(name: str, value: float | None, minimum: float) -> Check:
    """value >= minimum; None and NaN fail (callers skip optional gates before calling this)."""
    if value is None:
        return Check(name, None, minimum, False, f"{name} was not measured (needs >= {fmt(minimum)})")
    if math.isnan(value):
        return Check(name, value, minimum, False, f"{name} is nan (measurement failed; needs >= {fmt(minimum)})")
    if value + EPSILON >= minimum:
        return Check(name, value, minimum, True, f"{name} {fmt(value)} >= {fmt(minimum)}")
    shown, needed = _fmt_apart(value, minimum)
    return Check(name, value, minimum, False, f"{name} {shown} < {needed}")


def _reported(name: str, value: float | None, why: str) -> Check:
    shown = "not measured" if value is None else fmt(value)
    return Check(name, value, None, True, f"{name} {shown} ({why})", gated=False)


def _reliability(policy: GatePolicy, m: GateMetrics) -> Check:
    if m.n_facts == 0 and m.reliability is None:
        return _reported("reliability", None, "no active facts")
    return _at_least("reliability", m.reliability, policy.min_reliability)


def _generalization(policy: GatePolicy, m: GateMetrics) -> Check:
    if policy.min_generalization is None:
        return _reported("generalization", m.generalization, "reported only: gates.min_generalization is not set")
    if m.generalization is None:
        return _reported("generalization", None, "skipped: no fact has a paraphrase")
    return _at_least("generalization", m.generalization, policy.min_generalization)


def _locality(policy: GatePolicy, m: GateMetrics) -> Check:
    if m.locality is None:
        return _reported("locality", None, "skipped: no probe prompts")
    return _at_least("locality", m.locality, policy.min_locality)


def _retention(policy: GatePolicy, m: GateMetrics) -> Check:
    name, limit = "retention_drop", policy.max_retention_drop
    if m.retention is None:
        why = "no promoted version" if m.promoted_version is None else "no earlier fact to retain"
        return _reported(name, None, f"skipped: {why}")
    if math.isnan(m.retention):
        return Check(name, math.nan, limit, False, f"retention is nan (measurement failed; max drop {_pct(limit)})")
    drop = 1.0 - m.retention
    of = f" of {m.n_retained}" if m.n_retained is not None else ""
    since = f"version {m.promoted_version}" if m.promoted_version is not None else "the promoted version"
    text = (f"retention {fmt(m.retention)}: the candidate lost {_pct(drop)}{of} facts {since} answered "
            f"(max {_pct(limit)})")
    return Check(name, drop, limit, drop <= limit + EPSILON, text)


def _capability(task: str, policy: GatePolicy, m: GateMetrics) -> Check:
    name, limit = f"capability:{task}", policy.max_capability_drop
    cand, base = m.capability.get(task), m.base_capability.get(task)
    if cand is None or base is None:
        side = " and ".join(s for s, v in (("candidate", cand), ("base model", base)) if v is None)
        return Check(name, None, limit, False, f"{task}: no score for the {side} (a missing score fails)")
    if math.isnan(cand) or math.isnan(base):
        return Check(name, math.nan, limit, False, f"{task}: score is nan (candidate {fmt(cand)}, base {fmt(base)})")
    lower = task in m.capability_lower_is_better
    drop = cand - base if lower else base - cand
    head = f"{task} {fmt(cand)} vs base {fmt(base)}{' (lower is better)' if lower else ''}"
    pairs = m.capability_pairs.get(task) if policy.capability_test == "paired" else None
    unpaired = " (no per-item scores: point rule)" if policy.capability_test == "paired" and pairs is None else ""
    if drop <= limit + EPSILON:
        change = f"better by {fmt(-drop)}" if drop < 0 else f"worse by {fmt(drop)} <= {fmt(limit)}"
        return Check(name, drop, limit, True, f"{head}: {change}{_moved(pairs)}{unpaired}")
    shown, allowed = _fmt_apart(drop, limit)
    if pairs is None:
        return Check(name, drop, limit, False, f"{head}: worse by {shown} > {allowed}{unpaired}")
    p, alpha = pairs.p_worse, policy.capability_alpha
    if p >= alpha:
        return Check(name, drop, limit, True,
                     f"{head}: worse by {shown} > {allowed}, but not significant{_moved(pairs)}, "
                     f"p {_p(p)} >= {fmt(alpha)}")
    return Check(name, drop, limit, False,
                 f"{head}: worse by {shown} > {allowed}, significant{_moved(pairs)}, p {_p(p)} < {fmt(alpha)}")


def _moved(pairs: PairedCounts | None) -> str:
    return "" if pairs is None else f" ({pairs.lost} lost, {pairs.gained} gained of {pairs.n_items} items)"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else fmt(value, 3)


def capability_tasks(policy: GatePolicy, metrics: GateMetrics) -> list[str]:
    """The policy's tasks first (each must have scores), then any other measured task."""
    extra = sorted((set(metrics.capability) | set(metrics.base_capability)) - set(policy.capability_tasks))
    return list(dict.fromkeys([*policy.capability_tasks, *extra]))


def judge(policy: GatePolicy, metrics: GateMetrics) -> Verdict:
    """Every gate, in a fixed order; passed only if every gated check passed."""
    checks: list[Check] = [
        _reliability(policy, metrics),
        _generalization(policy, metrics),
        _locality(policy, metrics),
        _reported("exact_locality", metrics.exact_locality, "reported only"),
        _retention(policy, metrics),
        *(_capability(task, policy, metrics) for task in capability_tasks(policy, metrics)),
    ]
    reasons = [c.detail for c in checks if not c.passed]
    return Verdict(passed=not reasons, checks=checks, reasons=reasons)
