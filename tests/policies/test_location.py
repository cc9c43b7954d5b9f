"""The location pick: the paper's priority (capability, then locality, then generalization)."""

from __future__ import annotations

import math

import pytest

from locft.errors import ConfigError
from locft.policies.location import CandidateScore, LocateTolerances, select_from_sweep


def c(name: str, rel: float | None = 1.0, gen: float | None = 0.5, loc: float | None = 0.8,
      drop: float | None = 0.0, error: str | None = None) -> CandidateScore:
    return CandidateScore(name, rel, gen, loc, drop, error)


def winner(*scores: CandidateScore, **tol: float) -> str | None:
    sel = select_from_sweep(scores, LocateTolerances(**tol) if tol else None)
    return None if sel.winner is None else scores[sel.winner].name


def test_capability_comes_before_locality_and_generalization() -> None:
    # "a" is better at everything but capability; it loses.
    a = c("a", gen=0.9, loc=0.95, drop=0.05)
    b = c("b", gen=0.2, loc=0.60, drop=0.001)
    sel = select_from_sweep([a, b])
    assert sel.winner == 1
    assert sel.status[0].startswith("capability:") and "0.05" in sel.status[0]
    assert sel.status[1] == "chosen"


def test_locality_comes_before_generalization() -> None:
    a = c("a", gen=0.9, loc=0.70)
    b = c("b", gen=0.3, loc=0.85)
    assert winner(a, b) == "b"


def test_capability_within_tolerance_counts_as_equal_then_locality_decides() -> None:
    a = c("a", loc=0.90, drop=0.008)
    b = c("b", loc=0.70, drop=0.0)
    assert winner(a, b) == "a"  # 0.008 <= 0.0 + 0.01
    assert winner(a, b, capability=0.005) == "b"  # a tighter tolerance: a is out


def test_locality_ties_are_broken_by_generalization() -> None:
    a = c("a", loc=0.80, gen=0.30)
    b = c("b", loc=0.79, gen=0.60)  # within 0.02 of the best locality
    far = c("far", loc=0.70, gen=0.99)  # best generalization, but not a locality tie
    sel = select_from_sweep([a, b, far])
    assert sel.winner == 1
    assert sel.status[0].startswith("generalization: 0.3 < 0.6")
    assert sel.status[2].startswith("locality:")
    assert winner(a, b, far, locality=0.0) == "a"  # no tolerance: strictly the best locality


def test_exact_ties_go_to_higher_locality_then_smaller_drop_then_order() -> None:
    sel = select_from_sweep([c("a", gen=0.5, loc=0.80), c("b", gen=0.5, loc=0.81)])
    assert sel.winner == 1 and sel.status[0] == "tied: same generalization, locality 0.8 < 0.81"
    sel = select_from_sweep([c("a", gen=0.5, drop=0.004), c("b", gen=0.5, drop=0.001)])
    assert sel.winner == 1 and "capability drop 0.004 > 0.001" in sel.status[0]
    sel = select_from_sweep([c("a"), c("b")])
    assert sel.winner == 0 and sel.status[1] == "tied: the same numbers; the earlier candidate is chosen"


def test_a_location_that_did_not_learn_is_never_chosen() -> None:
    lazy = c("lazy", rel=0.2, loc=1.0, drop=0.0, gen=0.0)  # changed nothing: perfect locality
    good = c("good", rel=1.0, loc=0.6, drop=0.005, gen=0.5)
    sel = select_from_sweep([lazy, good])
    assert sel.winner == 1
    assert sel.status[0].startswith("did not learn the edits")
    # the reliability level is what keeps it out: tolerate any reliability and "lazy" wins
    assert winner(lazy, good, reliability=1.0) == "lazy"
    assert winner(c("x", rel=0.95, loc=0.9), c("y", rel=1.0, loc=0.5)) == "x"  # within 0.1


def test_failed_and_nan_candidates_are_out() -> None:
    sel = select_from_sweep([c("boom", error="out of memory", loc=1.0), c("nan", loc=math.nan), c("ok", loc=0.1)])
    assert sel.winner == 2
    assert sel.status[0] == "failed: out of memory"
    assert "nan" in sel.status[1]
    nothing = select_from_sweep([c("boom", error="x")])
    assert nothing.winner is None and nothing.steps == ["no candidate was measured successfully"]


def test_levels_that_were_not_measured_are_skipped_and_said_so() -> None:
    sel = select_from_sweep([c("a", drop=None, loc=0.5), c("b", drop=None, loc=0.9)])
    assert sel.winner == 1
    assert any(s.startswith("capability: not measured") for s in sel.steps)
    # measured for one only: not compared (the unmeasured one must not win by default)
    sel = select_from_sweep([c("a", drop=0.5, loc=0.9), c("b", drop=None, loc=0.5)])
    assert sel.winner == 0
    assert any("not measured for every candidate" in s for s in sel.steps)
    # no probes, no paraphrases: generalization None, the pick still follows capability
    assert winner(c("a", loc=None, gen=None, drop=0.2), c("b", loc=None, gen=None, drop=0.0)) == "b"


def test_a_negative_drop_is_an_improvement() -> None:
    assert winner(c("a", drop=-0.02, loc=0.5), c("b", drop=0.0, loc=0.9)) == "a"


@pytest.mark.parametrize("field", ["reliability", "capability", "locality"])
def test_tolerances_are_validated(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LocateTolerances(**{field: -0.1})
    with pytest.raises(ConfigError, match=field):
        LocateTolerances(**{field: math.nan})
