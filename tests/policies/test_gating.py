"""Gate policy as tables: metrics in, verdict out."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from locft.config import GatePolicy
from locft.policies.gating import (
    Check,
    GateMetrics,
    PairedCounts,
    Verdict,
    fmt,
    judge,
    pair_tasks,
    sign_test_p,
)

NAN = math.nan
POLICY = GatePolicy()  # reliability 0.95, locality 0.80, retention drop 0.02, capability drop 0.02
BASE = {"arc_easy": 0.50, "piqa": 0.64}


def good(**changes: Any) -> GateMetrics:
    """A candidate that passes every default gate; tests change one thing at a time."""
    metrics = GateMetrics(
        reliability=1.0, n_facts=100, generalization=0.55, locality=0.90, exact_locality=0.70,
        retention=1.0, n_retained=40, capability={"arc_easy": 0.50, "piqa": 0.64},
        base_capability=dict(BASE), promoted_version=3,
    )
    return replace(metrics, **changes)


# (case id, policy changes, metric changes, passed, failing check names)
TABLE: list[tuple[str, dict[str, Any], dict[str, Any], bool, list[str]]] = [
    ("all good", {}, {}, True, []),
    # reliability
    ("reliability below", {}, {"reliability": 0.91}, False, ["reliability"]),
    ("reliability exactly at threshold", {}, {"reliability": 0.95}, True, []),
    ("reliability nan", {}, {"reliability": NAN}, False, ["reliability"]),
    ("reliability missing with facts", {}, {"reliability": None}, False, ["reliability"]),
    ("no facts at all", {}, {"reliability": None, "n_facts": 0}, True, []),
    # generalization: reported only unless set
    ("generalization low but not gated", {}, {"generalization": 0.0}, True, []),
    ("generalization nan but not gated", {}, {"generalization": NAN}, True, []),
    ("generalization gated, below", {"min_generalization": 0.6}, {"generalization": 0.55}, False, ["generalization"]),
    ("generalization gated, at", {"min_generalization": 0.55}, {"generalization": 0.55}, True, []),
    ("generalization gated, nan", {"min_generalization": 0.5}, {"generalization": NAN}, False, ["generalization"]),
    ("generalization gated, no paraphrases", {"min_generalization": 0.5}, {"generalization": None}, True, []),
    # locality: gated when measured
    ("locality below", {}, {"locality": 0.79}, False, ["locality"]),
    ("locality at", {}, {"locality": 0.80}, True, []),
    ("locality nan", {}, {"locality": NAN}, False, ["locality"]),
    ("locality not measured", {}, {"locality": None}, True, []),
    ("exact locality is never gated", {}, {"exact_locality": 0.0}, True, []),
    # retention: drop = 1 - retention
    ("retention drop over", {}, {"retention": 0.95}, False, ["retention_drop"]),
    ("retention drop exactly at max", {}, {"retention": 0.98}, True, []),
    ("retention nan", {}, {"retention": NAN}, False, ["retention_drop"]),
    ("no promoted version", {}, {"retention": None, "promoted_version": None, "n_retained": None}, True, []),
    ("strict retention", {"max_retention_drop": 0.0}, {"retention": 0.999}, False, ["retention_drop"]),
    # capability: base - candidate <= max drop, every task
    ("capability drop over", {}, {"capability": {"arc_easy": 0.47, "piqa": 0.64}}, False, ["capability:arc_easy"]),
    ("capability drop exactly at max", {}, {"capability": {"arc_easy": 0.48, "piqa": 0.62}}, True, []),
    ("capability better than base", {}, {"capability": {"arc_easy": 0.60, "piqa": 0.70}}, True, []),
    ("capability task missing for candidate", {}, {"capability": {"arc_easy": 0.50}}, False, ["capability:piqa"]),
    ("capability task missing for base", {}, {"base_capability": {"piqa": 0.64}}, False, ["capability:arc_easy"]),
    ("capability nan", {}, {"capability": {"arc_easy": NAN, "piqa": 0.64}}, False, ["capability:arc_easy"]),
    ("capability base nan", {}, {"base_capability": {"arc_easy": 0.5, "piqa": NAN}}, False, ["capability:piqa"]),
    ("no capability tasks configured", {"capability_tasks": ()}, {"capability": {}, "base_capability": {}}, True, []),
    ("extra measured task is judged too", {"capability_tasks": ("arc_easy",)},
     {"capability": {"arc_easy": 0.5, "piqa": 0.5}}, False, ["capability:piqa"]),
    # lower is better (bits per byte): a rise is the drop
    ("bpb rise over", {"capability_tasks": ("wiki_bpb",)},
     {"capability": {"wiki_bpb": 1.05}, "base_capability": {"wiki_bpb": 1.00},
      "capability_lower_is_better": frozenset({"wiki_bpb"})}, False, ["capability:wiki_bpb"]),
    ("bpb fall passes", {"capability_tasks": ("wiki_bpb",)},
     {"capability": {"wiki_bpb": 0.90}, "base_capability": {"wiki_bpb": 1.00},
      "capability_lower_is_better": frozenset({"wiki_bpb"})}, True, []),
    # paired (the default): a drop over the max fails only when the sign test says it is real
    ("paired: drop over max, not significant", {},
     {"capability": {"arc_easy": 0.46, "piqa": 0.64}, "capability_pairs": {"arc_easy": PairedCounts(200, 14, 6)}},
     True, []),
    ("paired: drop over max, significant", {},
     {"capability": {"arc_easy": 0.46, "piqa": 0.64}, "capability_pairs": {"arc_easy": PairedCounts(200, 9, 1)}},
     False, ["capability:arc_easy"]),
    ("paired: a stricter alpha lets it pass", {"capability_alpha": 0.01},
     {"capability": {"arc_easy": 0.46, "piqa": 0.64}, "capability_pairs": {"arc_easy": PairedCounts(200, 9, 1)}},
     True, []),
    ("paired: significant but within max", {},
     {"capability": {"arc_easy": 0.49, "piqa": 0.64}, "capability_pairs": {"arc_easy": PairedCounts(200, 2, 0)}},
     True, []),
    ("point: the pairs are ignored", {"capability_test": "point"},
     {"capability": {"arc_easy": 0.46, "piqa": 0.64}, "capability_pairs": {"arc_easy": PairedCounts(200, 14, 6)}},
     False, ["capability:arc_easy"]),
    ("paired: a missing score still fails", {},
     {"capability": {"arc_easy": 0.5}, "capability_pairs": {"piqa": PairedCounts(200, 0, 0)}},
     False, ["capability:piqa"]),
    ("bpb rise at max", {"capability_tasks": ("wiki_bpb",)},
     {"capability": {"wiki_bpb": 1.02}, "base_capability": {"wiki_bpb": 1.00},
      "capability_lower_is_better": frozenset({"wiki_bpb"})}, True, []),
    # several failures at once: every one is a reason
    ("everything fails", {}, {"reliability": 0.5, "locality": 0.1, "retention": 0.5,
                              "capability": {"arc_easy": 0.2, "piqa": 0.5}}, False,
     ["reliability", "locality", "retention_drop", "capability:arc_easy", "capability:piqa"]),
]


@pytest.mark.parametrize("policy_changes, metric_changes, passed, failing",
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_verdict_table(policy_changes: dict[str, Any], metric_changes: dict[str, Any], passed: bool,
                       failing: list[str]) -> None:
    verdict = judge(replace(POLICY, **policy_changes), good(**metric_changes))
    assert verdict.passed is passed
    assert [c.name for c in verdict.checks if not c.passed] == failing
    assert len(verdict.reasons) == len(failing)


@pytest.mark.parametrize(
    "metric_changes, sentence",
    [
        ({"reliability": 0.91}, "reliability 0.91 < 0.95"),
        ({"locality": 0.7512}, "locality 0.7512 < 0.8"),
        ({"reliability": NAN}, "reliability is nan (measurement failed; needs >= 0.95)"),
        ({"retention": 0.95}, "retention 0.95: the candidate lost 5% of 40 facts version 3 answered (max 2%)"),
        ({"capability": {"arc_easy": 0.46, "piqa": 0.64}},
         "arc_easy 0.46 vs base 0.5: worse by 0.04 > 0.02 (no per-item scores: point rule)"),
        ({"capability": {"arc_easy": 0.46, "piqa": 0.64},
          "capability_pairs": {"arc_easy": PairedCounts(200, 9, 1), "piqa": PairedCounts(200, 5, 5)}},
         "arc_easy 0.46 vs base 0.5: worse by 0.04 > 0.02, significant (9 lost, 1 gained of 200 items),"
         " p 0.011 < 0.05"),
        ({"capability": {"arc_easy": 0.5}}, "piqa: no score for the candidate (a missing score fails)"),
    ],
)
def test_reasons_are_sentences(metric_changes: dict[str, Any], sentence: str) -> None:
    assert judge(POLICY, good(**metric_changes)).reasons == [sentence]


def test_every_gate_is_reported_even_when_skipped() -> None:
    verdict = judge(POLICY, good(generalization=None, locality=None, retention=None, promoted_version=None))
    names = [c.name for c in verdict.checks]
    assert names == ["reliability", "generalization", "locality", "exact_locality", "retention_drop",
                     "capability:arc_easy", "capability:piqa"]
    skipped = {c.name: c for c in verdict.checks if not c.gated}
    assert set(skipped) == {"generalization", "locality", "exact_locality", "retention_drop"}
    assert "no promoted version" in skipped["retention_drop"].detail
    assert "not set" in skipped["generalization"].detail
    assert verdict.check("locality").threshold is None


def test_verdict_round_trips_through_strict_json() -> None:
    verdict = judge(POLICY, good(reliability=NAN, capability={"arc_easy": 0.4}))
    text = json.dumps(verdict.to_dict(), allow_nan=False)  # NaN is not JSON: stored as "nan"
    again = Verdict.from_dict(json.loads(text))
    assert again.passed is False and again.reasons == verdict.reasons
    assert math.isnan(again.check("reliability").value)  # type: ignore[arg-type]
    assert again.check("exact_locality").threshold is None
    assert [c.name for c in again.checks] == [c.name for c in verdict.checks]
    assert isinstance(again.checks[0], Check)


def test_metrics_round_trip() -> None:
    metrics = good(capability_lower_is_better=frozenset({"wiki_bpb"}))
    again = GateMetrics.from_dict(json.loads(json.dumps(metrics.to_dict(), allow_nan=False)))
    assert again == metrics


def test_metrics_with_pairs_round_trip() -> None:
    metrics = good(capability_pairs={"arc_easy": PairedCounts(200, 14, 6)})
    again = GateMetrics.from_dict(json.loads(json.dumps(metrics.to_dict(), allow_nan=False)))
    assert again == metrics and isinstance(again.capability_pairs["arc_easy"], PairedCounts)
    older = {k: v for k, v in metrics.to_dict().items() if k != "capability_pairs"}  # stored before pairs
    assert GateMetrics.from_dict(older).capability_pairs == {}


@pytest.mark.parametrize("lost, gained, p", [
    (0, 0, 1.0), (1, 0, 0.5), (0, 1, 1.0), (5, 0, 1 / 32), (3, 3, 42 / 64), (9, 1, 11 / 1024),
])
def test_sign_test_is_the_exact_one_sided_binomial_tail(lost: int, gained: int, p: float) -> None:
    assert sign_test_p(lost, gained) == pytest.approx(p, rel=1e-12)
    assert PairedCounts(200, lost, gained).p_worse == sign_test_p(lost, gained)
    assert PairedCounts(200, lost, gained).to_dict() == {"n_items": 200, "lost": lost, "gained": gained,
                                                          "p_worse": sign_test_p(lost, gained)}


def test_sign_test_stays_exact_on_whole_splits() -> None:
    # PIQA's 1,838 items: big integers, no overflow, no underflow to a wrong 0 or 1
    assert 0.0 < sign_test_p(1000, 838) < 1e-3
    assert sign_test_p(919, 919) == pytest.approx(0.5 + math.comb(1838, 919) / 2**1838 / 2, rel=1e-12)


def test_paired_counts_from_items() -> None:
    assert PairedCounts.from_items([1, 1, 0, 0, 1], [1, 0, 1, 0, 0]) == PairedCounts(5, 2, 1)
    with pytest.raises(ValueError, match="differ in number"):
        PairedCounts.from_items([1, 0], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        PairedCounts.from_items([0.5], [1])
    with pytest.raises(ValueError, match="impossible"):
        PairedCounts(3, 2, 2)


def test_pair_tasks_leaves_out_what_does_not_pair() -> None:
    base = {"arc_easy": [1.0, 0.0, 1.0], "piqa": [1.0, 1.0], "wiki_bpb": None, "copa": [1.0]}
    candidate = {"arc_easy": [0.0, 1.0, 1.0], "piqa": [1.0], "wiki_bpb": None, "copa": [0.5]}
    assert pair_tasks(base, candidate) == {"arc_easy": PairedCounts(3, 1, 1)}


def test_a_failed_measurement_stays_failed_after_storage() -> None:
    """NaN must not come back as None: None would skip the optional locality gate."""
    metrics = good(locality=NAN, capability={"arc_easy": NAN, "piqa": 0.64})
    again = GateMetrics.from_dict(json.loads(json.dumps(metrics.to_dict(), allow_nan=False)))
    assert math.isnan(again.locality)  # type: ignore[arg-type]
    assert judge(POLICY, again).reasons == judge(POLICY, metrics).reasons
    assert not judge(POLICY, again).passed


@pytest.mark.parametrize("value, text", [(0.91, "0.91"), (0.95, "0.95"), (0.94999, "0.95"), (0.9499, "0.9499"),
                                         (1.0, "1"), (0.0, "0"), (-0.00001, "0"), (NAN, "nan"), (None, "n/a")])
def test_number_format(value: float | None, text: str) -> None:
    assert fmt(value) == text


def test_policies_do_not_import_torch() -> None:
    code = ("import sys, locft.policies.gating, locft.policies.schedule; "
            "print(sorted(m for m in ('torch', 'lm_eval', 'apscheduler', 'sqlmodel', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_near_miss_never_reads_as_equal() -> None:
    assert judge(POLICY, good(reliability=0.94999)).reasons == ["reliability 0.94999 < 0.95"]
