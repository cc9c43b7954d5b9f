"""What the dashboard and `locft versions show` read from the store, as plain dicts.

No web framework and no torch here: the CLI imports this too. Everything comes from the store
library; a version's per-fact correctness comes from its gate report (`correct_revision_ids`,
and `evaluation.sampled`: above `gates.reliability_sample` facts only a seeded sample was
asked, and a fact outside it is "not measured", not wrong).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from locft.store.fact_records import FactFilter

Correct = bool | None  # True / False, or None: not measured


def _report(version: Any) -> dict[str, Any]:
    return dict(version.gate.report or {}) if version.gate is not None else {}


def correctness(version: Any) -> tuple[set[int], bool] | None:
    """(revision ids the version answered correctly, whether every fact was asked); None when
    the version has no gate report with per-fact results (version 0, an abandoned round)."""
    report = _report(version)
    if "correct_revision_ids" not in report:
        return None
    correct = {int(r) for r in report.get("correct_revision_ids") or ()}
    evaluation = report.get("evaluation") or {}
    return correct, not evaluation.get("sampled", False)


def is_correct(revision_id: int, known: tuple[set[int], bool] | None) -> Correct:
    if known is None:
        return None
    correct, complete = known
    if revision_id in correct:
        return True
    return False if complete else None


def version_facts(store: Any, version_id: int) -> dict[str, Any]:
    """The facts a version was trained on, each with whether the version answers it correctly."""
    version = store.get_version(version_id)
    known = correctness(version)
    facts = []
    for entry in store.version_facts(version_id):
        f = entry.fact
        facts.append({"fact_id": entry.fact_id, "revision_id": entry.revision_id, "prompt": f.prompt,
                      "answer": f.answer, "correct": is_correct(entry.revision_id, known)})
    n_correct = sum(1 for f in facts if f["correct"] is True)
    n_measured = sum(1 for f in facts if f["correct"] is not None)
    return {"version": version.id, "state": version.state, "fact_count": version.fact_count,
            "measured": known is not None, "sampled": known is not None and not known[1],
            "correct": n_correct, "measured_facts": n_measured, "facts": facts}


# ---- rounds ------------------------------------------------------------------------------------


def _table(report: dict[str, Any], key: str) -> dict[str, Any]:
    """report[key] when it is a table, else an empty one (reports written by older versions)."""
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def gate_summary(version: Any) -> dict[str, Any] | None:
    """A version's gate verdict without the bulky parts: checks (value vs threshold), metrics,
    capability per task (candidate, base, delta, items lost / gained), training losses."""
    if version is None or version.gate is None:
        return None
    gate = version.gate
    report = dict(gate.report or {})
    verdict, capability = _table(report, "verdict"), _table(report, "capability")
    cand, base = capability.get("candidate") or {}, capability.get("base") or {}
    pairs = capability.get("pairs") or {}
    tasks = []
    for task in sorted(set(cand) | set(base)):
        c, b = _num(cand.get(task)), _num(base.get(task))
        pair = pairs.get(task) or {}
        tasks.append({"task": task, "candidate": c, "base": b,
                      "delta": None if c is None or b is None else c - b,
                      "lost": pair.get("lost"), "gained": pair.get("gained"), "p_worse": pair.get("p_worse")})
    training = _table(report, "training")
    return {
        "passed": gate.passed, "created_at": gate.created_at.isoformat(), "metrics": gate.metrics,
        "checks": [c for c in verdict.get("checks") or [] if isinstance(c, dict)],
        "reasons": report.get("reasons") or [], "capability": tasks,
        "loss_per_epoch": training.get("loss_per_epoch"),
        "replay_loss_per_epoch": training.get("replay_loss_per_epoch"),
        "training": {k: training.get(k) for k in ("epochs", "converged", "final_loss", "steps", "lr", "location",
                                                  "train_seconds", "seconds_per_epoch", "replay_pool")
                     if k in training},
    }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def round_view(r: Any, versions: Mapping[int, Any]) -> dict[str, Any]:
    version = versions.get(r.version_id) if r.version_id is not None else None
    data = r.to_dict()
    data["seconds"] = r.seconds
    data["version"] = None if version is None else {"id": version.id, "state": version.state,
                                                    "fact_count": version.fact_count}
    data["gate"] = gate_summary(version)
    return data


def rounds(store: Any, limit: int = 50) -> list[dict[str, Any]]:
    by_id = {v.id: v for v in store.list_versions()}
    return [round_view(r, by_id) for r in store.list_rounds(limit=limit)]


def round_one(store: Any, round_id: int) -> dict[str, Any]:
    r = store.get_round(round_id)
    versions = {r.version_id: store.get_version(r.version_id)} if r.version_id is not None else {}
    return round_view(r, versions)


# ---- facts -------------------------------------------------------------------------------------


def facts(store: Any, status: FactFilter = "active", search: str | None = None, limit: int = 50,
          offset: int = 0, recent_versions: int = 20, cache: dict[int, dict[int, int]] | None = None
          ) -> dict[str, Any]:
    """A page of facts with: pending or not, the newest versions that were trained on the
    fact's current revision, and whether the promoted version answers it correctly. `cache`
    keeps each version's fact set between calls (a version never changes once recorded)."""
    cache = {} if cache is None else cache

    def trained_set(version_id: int) -> dict[int, int]:
        if version_id not in cache:
            cache[version_id] = {e.fact_id: e.revision_id for e in store.version_facts(version_id)}
        return cache[version_id]

    items = store.list_facts(status, search=search or None, limit=limit, offset=offset)
    promoted = store.promoted_version()
    known = correctness(promoted)
    pending = {p.fact_id: p.kind for p in store.pending_facts()} if status != "pending" else {}
    versions = [v for v in store.list_versions() if not v.is_base][:recent_versions]
    trained = {v.id: trained_set(v.id) for v in versions}
    promoted_set = {} if promoted.is_base else trained_set(promoted.id)
    out = []
    for info in items:
        rev = info.current
        in_versions = [vid for vid, m in trained.items() if m.get(info.fact_id) == rev.revision_id]
        trained_rev = promoted_set.get(info.fact_id)
        out.append({
            "fact_id": info.fact_id, "status": info.status, "revision": rev.revision, "revision_id": rev.revision_id,
            "prompt": rev.prompt, "answer": rev.answer, "subject": rev.subject,
            "paraphrases": list(rev.paraphrases), "tags": list(rev.tags),
            "pending": info.pending or pending.get(info.fact_id),
            "in_versions": in_versions,
            "promoted_correct": (is_correct(trained_rev, known)
                                 if trained_rev is not None and trained_rev == rev.revision_id else None),
            "updated_at": rev.created_at.isoformat(),
        })
    return {"promoted": promoted.id, "versions_checked": [v.id for v in versions], "data": out,
            "counts": _counts(store)}


def _counts(store: Any) -> dict[str, int]:
    c = store.count_facts()
    return {"active": c.active, "pending": c.pending, "retracted": c.retracted}


def downsample(points: Iterable[Any], most: int) -> list[Any]:
    pts = list(points)
    if len(pts) <= most:
        return pts
    step = len(pts) / most
    return [pts[int(i * step)] for i in range(most - 1)] + [pts[-1]]
