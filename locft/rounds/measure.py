"""Every gate measurement of a round's candidate, through the scoped model (what users get):
reliability, generalization, locality, retention and capability, for policies.gating.judge."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from locft.config import LocftConfig
from locft.evaluation.progress import EvaluationProgress
from locft.home import Home
from locft.policies.gating import GateMetrics, PairedCounts, pair_tasks
from locft.rounds.phases import PhaseClock, RoundProgress, RoundProgressCallback
from locft.rounds.plan import RoundPlan

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel
    from locft.store import FactEntry

log = logging.getLogger(__name__)


def probe_prompts_for(config: LocftConfig, entries: Sequence[FactEntry]) -> list[str]:
    """Locality prompts: the fixed set plus every fact's own probes (deduplicated, in order)."""
    from locft.evaluation.probes import fixed_probe_prompts

    own = [p.prompt for e in entries for p in e.fact.probes]
    return list(dict.fromkeys(fixed_probe_prompts(config.gates.probe_set_size) + own))


def measure_candidate(
    home: Home,
    config: LocftConfig,
    plan: RoundPlan,
    loaded: LoadedModel,
    tensors: dict[str, Any],
    scope: Any,
    prompt_format: str,
    probe_prompts: list[str],
    clock: PhaseClock,
    emit: RoundProgressCallback,
    check_stop: Callable[[], None],
) -> tuple[GateMetrics, dict[str, Any]]:
    """Every gate measurement of the candidate, through the scoped model (what users get); returns
    GateMetrics and the report's details."""
    from locft.engine.generate import greedy_generate
    from locft.engine.scoped import answering
    from locft.evaluation.capability import ScopeOnly, base_task_scores, lower_is_better, task_scores
    from locft.evaluation.editing import evaluate_edits, scope_report, token_agreement
    from locft.evaluation.probes import FIXED_PROBE_PROMPTS, base_answers

    policy = config.gates
    max_new = config.edit.max_new_tokens
    entries = list(plan.entries)

    # The probes' base answers come from the UNEDITED model (nothing is applied here), cached
    # per base fingerprint.
    check_stop()
    emit(RoundProgress("base_probes", detail=f"base model answers to {len(probe_prompts)} probe prompts (cached)"))
    with clock.phase("base_probes"):
        base_gens, generated = base_answers(
            probe_prompts, lambda ps: greedy_generate(loaded, ps, prompt_format, max_new), home.cache_dir,
            loaded.fingerprint, prompt_format, max_new,
        )

    # Retention: facts the promoted version answered correctly, still active as the same revision.
    promoted = plan.promoted
    known = set()
    if promoted.id != 0 and promoted.gate is not None:
        known = {int(r) for r in promoted.gate.report.get("correct_revision_ids") or ()}
    retained_entries = [e for e in entries if e.revision_id in known]

    sample = _sample(entries, policy.reliability_sample, f"{config.edit.seed}:{plan.digest}")
    sampled_ids = {e.revision_id for e in sample}
    extra = _sample([e for e in retained_entries if e.revision_id not in sampled_ids],
                    policy.reliability_sample, f"retention:{plan.digest}")

    def on_eval(done: int, total: int, label: str) -> None:
        emit(RoundProgress("evaluate", done, total, label))

    check_stop()
    emit(RoundProgress("evaluate", detail="reliability, generalization, locality"))
    with clock.phase("evaluate"), answering(loaded, tensors, scope):
        evaluation = evaluate_edits(loaded, [e.fact for e in sample], prompt_format, probe_prompts, base_gens,
                                    max_new, progress=on_eval)
        # Token locality per probe source (one teacher-forced pass; no generation): which prompts
        # an edit disturbs is the first question when the locality gate fails.
        n_fixed = min(policy.probe_set_size, len(FIXED_PROBE_PROMPTS))
        per_probe = token_agreement(loaded, probe_prompts, base_gens, prompt_format) if probe_prompts else []
    locality_by_source = {
        "fixed_probe_set": _mean_or_none(per_probe[:n_fixed]),
        "facts_own_probes": _mean_or_none(per_probe[n_fixed:]),
    }
    coverage = scope_report(loaded, scope, [e.fact for e in sample], probe_prompts, prompt_format)
    correct = {e.revision_id: ok for e, ok in zip(sample, evaluation.correct)}

    check_stop()
    with clock.phase("retention"):
        if extra:
            emit(RoundProgress("retention", 0, len(extra), "facts the promoted version knew"))
            with answering(loaded, tensors, scope):
                more = evaluate_edits(loaded, [e.fact for e in extra], prompt_format, (), (), max_new)
            correct.update({e.revision_id: ok for e, ok in zip(extra, more.correct)})
        retention_set = [e.revision_id for e in retained_entries if e.revision_id in correct]
        retention = (sum(correct[r] for r in retention_set) / len(retention_set)) if retention_set else None

    tasks = list(policy.capability_tasks)
    cand_scores: dict[str, float] = {}
    capability_rows: dict[str, int] | None = None
    capability_items: dict[str, Any] | None = None
    base_scores: dict[str, float] = {}
    pairs: dict[str, PairedCounts] = {}
    if tasks:
        check_stop()
        cap_dir = home.cache_dir

        def on_cap(which: str) -> EvaluationProgress:
            return lambda done, total, task: emit(RoundProgress(which, done, total, task))

        def on_requests(which: str) -> EvaluationProgress:
            # Whole splits take minutes a task on a CPU: show the answer choices scored, and stop
            # there when asked rather than after the task.
            def report(done: int, total: int, task: str) -> None:
                emit(RoundProgress(which, done, total, f"{task}, task {tasks.index(task) + 1} of {len(tasks)}, "
                                                       "answer choices scored"))
                check_stop()
            return report

        emit(RoundProgress("capability_base", 0, len(tasks), "base model capability (cached per base)"))
        with clock.phase("capability_base"):
            base_scored = base_task_scores(loaded.model, loaded.tokenizer, loaded.fingerprint, tasks,
                                           policy.capability_limit, cap_dir, progress=on_cap("capability_base"),
                                           request_progress=on_requests("capability_base"))
        check_stop()
        emit(RoundProgress("capability", 0, len(tasks), "candidate capability (lm-eval)"))
        # A subject scope is decided from the text alone: items outside it are the base model's
        # answers by construction and keep the base's scores, so the gate costs what the edits touch.
        only = ScopeOnly(scope.names_a_subject, base_scored) if scope is not None and scope.match == "subject" else None
        with clock.phase("capability"), answering(loaded, tensors, scope) as scope_counts:
            cand_scored = task_scores(loaded.model, loaded.tokenizer, tasks, policy.capability_limit,
                                      cap_dir, progress=on_cap("capability"),
                                      request_progress=on_requests("capability"), only_in_scope=only)
        capability_items = only.to_dict() if only is not None else None
        capability_rows = scope_counts.to_dict() if scope is not None else None
        base_scores = {k: v.score for k, v in base_scored.items()}
        cand_scores = {k: v.score for k, v in cand_scored.items()}
        pairs = pair_tasks({k: v.items for k, v in base_scored.items()}, {k: v.items for k, v in cand_scored.items()})

    n_facts = len(entries)
    metrics = GateMetrics(
        reliability=evaluation.reliability if sample else None,
        n_facts=n_facts,
        generalization=evaluation.generalization,
        locality=evaluation.locality_token,
        exact_locality=evaluation.locality_exact,
        retention=retention,
        n_retained=len(retention_set) if retention_set else None,
        capability=cand_scores,
        base_capability=base_scores,
        capability_lower_is_better=lower_is_better(tasks) if tasks else frozenset(),
        capability_pairs=pairs,
        promoted_version=promoted.id if promoted.id != 0 else None,
    )
    report = {
        "evaluation": {
            "n_facts": n_facts, "n_evaluated": len(sample), "sampled": len(sample) < n_facts,
            "n_paraphrases": evaluation.n_paraphrases, "n_probes": evaluation.n_probes,
            "n_fixed_probes": n_fixed, "token_locality_by_source": locality_by_source,
            "probe_answers_generated": generated, "n_retention_checked": len(retention_set),
            "samples": evaluation.samples,
            "scope": coverage,  # recall on paraphrases, false positives on probes; None: unscoped
        },
        # what the NEXT round's retention gate checks against
        "correct_revision_ids": sorted(r for r, ok in correct.items() if ok),
        "capability": {"candidate": cand_scores, "base": base_scores, "limit": policy.capability_limit,
                       "test": policy.capability_test,
                       # forward rows (answer choices) the scope sent to the edit; the rest got the base
                       "scope_rows": capability_rows,
                       # items run through the version; the others kept the base's score (None: all run)
                       "scope_items": capability_items,
                       "pairs": {k: v.to_dict() for k, v in pairs.items()}},
    }
    for name, value in (("reliability", metrics.reliability), ("locality", metrics.locality)):
        if value is not None and math.isnan(value):
            log.warning("%s is NaN", name)
    return metrics, report


def _mean_or_none(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sample(entries: Sequence[FactEntry], limit: int, seed: str) -> list[FactEntry]:
    """All entries, or a seeded sample of `limit` of them (same set + seed -> same sample)."""
    if len(entries) <= limit:
        return list(entries)
    picked = sorted(random.Random(seed).sample(range(len(entries)), limit))
    return [entries[i] for i in picked]
