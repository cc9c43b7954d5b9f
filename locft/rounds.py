"""One edit round as a library call: the daemon's worker, `locft round run` and bench/ share it.

    freeze   the active fact revisions now, their digest, the promoted version; skip when the
             set is the one the promoted version was trained on (policies.schedule.decide_round)
    load     the base model (its fingerprint must be the store's)
    train    LocFT-BF from the BASE weights over ALL active facts (never only the new ones:
             replaying the whole set is what keeps old edits alive; retracted facts vanish
             because nothing is carried over from the previous version); with edit.replay_ratio
             the base model's own answers to generic questions are mixed in, never a probe
    snapshot the tuned tensors, written atomically; THEN the immutable Version row (candidate)
    gates    reliability (all active facts, or a seeded sample of gates.reliability_sample),
             generalization (paraphrases), locality (the facts' probes + a fixed probe set whose
             base answers are cached per base fingerprint), retention (facts the promoted version
             answered correctly that are still active), capability (lm-eval, candidate vs cached
             base scores) -> policies.gating.judge
    decide   promote (gates.promotion = auto), leave as candidate (manual), or reject; the gate
             report is appended to the version
    record   the round: outcome, per-phase timings, loss per epoch

Cancellation: `should_stop()` is polled at every training step and between phases; a stopped
round is recorded as interrupted, its unrecorded snapshot removed and a recorded but ungated
candidate gets a failed gate result, so it can never be promoted without --force.
A process killed outright (kill -9, OOM) leaves a 'running' round: `recover_rounds` (run by
the daemon, and by anyone taking the round lock) closes it the same way.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

from locft.config import LocftConfig, to_dict
from locft.errors import LocftError
from locft.facts import fact_set_digest
from locft.home import Home
from locft.locks import PidLock, round_lock
from locft.policies.gating import GateMetrics, PairedCounts, Verdict, judge, pair_tasks
from locft.policies.schedule import RoundDecision, Trigger, decide_round

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel
    from locft.store import FactEntry, Store, VersionInfo

log = logging.getLogger(__name__)

RoundOutcome = Literal["promoted", "candidate", "rejected", "skipped", "failed", "interrupted"]
ACTOR = "locft-round"
SNAPSHOT_PREFIX = "round-"
# The order phases run in (and `locft round run` shows them).
PHASES: tuple[str, ...] = (
    "freeze", "load", "replay", "train", "snapshot", "record", "base_probes", "evaluate", "retention",
    "capability_base", "capability", "judge", "cleanup",
)


class RoundCancelled(LocftError):
    """should_stop() said stop: the round is abandoned (recorded as interrupted)."""


@dataclass(frozen=True)
class RoundProgress:
    """What a round is doing now; shells render it (the library only calls back)."""

    phase: str
    done: int | None = None
    total: int | None = None
    detail: str = ""
    loss: float | None = None


ProgressCallback = Callable[[RoundProgress], None]


@dataclass(frozen=True)
class RoundPlan:
    """Phase 1: the frozen fact set and whether a round should run for it."""

    trigger: str
    decision: RoundDecision
    entries: tuple[FactEntry, ...]
    digest: str
    pending: int
    promoted: VersionInfo

    @property
    def run(self) -> bool:
        return self.decision.run


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


# ---------------------------------------------------------------------------------------------
# planning (cheap: no torch; the daemon asks this before starting a worker)


def plan_round(
    store: Store,
    config: LocftConfig,
    trigger: Trigger,
    *,
    force: bool = False,
    avoid_digest: str | None = None,
) -> RoundPlan:
    """Freeze the active fact set and decide whether a round runs for it.

    `avoid_digest`: a fact set whose last automatic round failed (the daemon remembers it), so
    that automatic triggers do not retry a crashing round in a loop; explicit triggers still may.
    """
    entries = tuple(store.active_facts())
    digest = fact_set_digest(e.fact for e in entries)
    promoted = store.promoted_version()
    pending = store.count_facts().pending
    # Version 0 is "only the base model": decide_round wants None there.
    promoted_digest = None if promoted.id == 0 else promoted.fact_set_digest
    rejected = [v for v in store.list_versions(state="rejected") if v.id > promoted.id]
    rejected_digest = rejected[0].fact_set_digest if rejected else None
    rejected_version = rejected[0].id if rejected else None
    if avoid_digest is not None and avoid_digest == digest:  # decide_round takes one such set
        rejected_digest, rejected_version = avoid_digest, None
    decision = decide_round(
        trigger, pending, digest, promoted_digest, config.schedule, force,
        promoted_version=promoted.id, rejected_digest=rejected_digest, rejected_version=rejected_version,
    )
    return RoundPlan(trigger, decision, entries, digest, pending, promoted)


def record_skipped(
    store: Store, trigger: Trigger, reason: str, *, actor: str | None = None, request_ids: Sequence[int] = ()
) -> int:
    """A round that decided not to train is still recorded (and answers its requests)."""
    info = store.start_round(trigger, actor=actor, request_ids=request_ids)
    store.finish_round(info.id, "skipped", error=reason, actor=actor)
    log.info("round %d skipped: %s", info.id, reason)
    return info.id


# ---------------------------------------------------------------------------------------------
# the round


class _Clock:
    """Per-phase wall time; a phase entered twice accumulates."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def timings(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(time.perf_counter() - self.started, 3)
        return out


@dataclass
class _State:
    """What exists so far, so that an abandoned round can be cleaned up exactly."""

    round_id: int
    snapshot_dir: Path | None = None  # written, maybe not yet recorded
    version_id: int | None = None  # recorded
    gated: bool = False
    # the gate decision once it is committed (outcome, reason for a rejection): a stop or crash
    # during cleanup after it must not record the round as interrupted or failed
    decided: tuple[str, str | None] | None = None
    loss: list[float] = field(default_factory=list)


def _sample(entries: Sequence[FactEntry], limit: int, seed: str) -> list[FactEntry]:
    """All entries, or a seeded sample of `limit` of them (same set + seed -> same sample)."""
    if len(entries) <= limit:
        return list(entries)
    picked = sorted(random.Random(seed).sample(range(len(entries)), limit))
    return [entries[i] for i in picked]


def run_round(
    home: Home,
    config: LocftConfig,
    store: Store,
    *,
    trigger: Trigger = "manual",
    force: bool = False,
    actor: str | None = None,
    request_ids: Sequence[int] = (),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    loaded: LoadedModel | None = None,
) -> RoundResult:
    """Run one round end to end (see the module docstring) and record it in the store.

    The caller must hold the home's round lock (`hold_round_lock`), so that no other round runs.
    `loaded`: an already loaded base model to reuse (bench/tests); it is left unchanged.
    Returns the result for promoted / candidate / rejected / skipped / interrupted rounds;
    a failure is recorded as 'failed' and re-raised.
    """
    actor = actor or ACTOR
    emit = progress or (lambda p: None)
    clock = _Clock()
    emit(RoundProgress("freeze", detail="freezing the active fact set"))
    with clock.phase("freeze"):
        plan = plan_round(store, config, trigger, force=force)
    if not plan.run:
        round_id = record_skipped(store, trigger, plan.decision.reason, actor=actor, request_ids=request_ids)
        return RoundResult("skipped", plan.decision.reason, round_id, trigger, n_facts=len(plan.entries),
                           fact_set_digest=plan.digest, promoted_version_id=plan.promoted.id,
                           timings=clock.timings())

    info = store.start_round(trigger, actor=actor, request_ids=request_ids)
    state = _State(info.id)
    log.info("round %d (%s): %s; %d active fact(s)", info.id, trigger, plan.decision.reason, len(plan.entries))
    try:
        result = _run(home, config, store, plan, state, clock, actor, emit, should_stop, loaded)
    except RoundCancelled as exc:
        _abandon(store, state, "interrupted", str(exc), clock, actor)
        return RoundResult("interrupted", str(exc), state.round_id, trigger, version_id=state.version_id,
                           n_facts=len(plan.entries), fact_set_digest=plan.digest, error=str(exc),
                           timings=clock.timings(), loss_per_epoch=state.loss,
                           promoted_version_id=store.promoted_version().id)
    except BaseException as exc:  # KeyboardInterrupt too: the round must not stay 'running'
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        outcome = "interrupted" if interrupted else "failed"
        message = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
        try:
            _abandon(store, state, outcome, message, clock, actor)
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not record round %d as %s", state.round_id, outcome)
        raise
    return result


def _run(
    home: Home,
    config: LocftConfig,
    store: Store,
    plan: RoundPlan,
    state: _State,
    clock: _Clock,
    actor: str,
    emit: ProgressCallback,
    should_stop: Callable[[], bool] | None,
    loaded: LoadedModel | None,
) -> RoundResult:
    from locft.engine.model_io import load_base
    from locft.engine.snapshot import save_snapshot
    from locft.engine.train import EditCancelled, edit

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise RoundCancelled("the round was stopped before it finished")

    facts = [e.fact for e in plan.entries]
    probe_prompts = _probe_prompts(config, plan.entries)
    check_stop()
    emit(RoundProgress("load", detail="loading the base model"))
    with clock.phase("load"):
        if loaded is None:
            loaded = load_base(config.model, home.root)
        store.record_base_fingerprint(loaded.fingerprint, actor=actor)  # refuses another base model

    from locft.engine.resolve import resolve_edit_config
    from locft.engine.scope import scoped_edit_defaults

    gated = config.serve.scope == "gated"
    edit_input = scoped_edit_defaults(config.edit, gated)  # no replay by default under a scope
    # per-model defaults, replay included; resolved once: edit() finds nothing left to fill
    edit_cfg = resolve_edit_config(loaded, edit_input, len(facts))
    replay = None
    if facts and edit_cfg.replay_ratio and edit_cfg.pipeline == "breadth-first":
        # Built here, not inside edit(), so that the locality probes are never replayed: a
        # probe trained on would make the locality gate measure memory, not locality.
        from locft.engine.replay import replay_for

        check_stop()
        emit(RoundProgress("replay", detail="base model answers to the replay prompts (cached)"))
        with clock.phase("replay"):
            trained_on = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases]
            replay = replay_for(loaded, edit_cfg, edit_cfg.prompt_format, len(facts),
                                exclude=trained_on + probe_prompts, cache_dir=home.cache_dir)

    check_stop()
    emit(RoundProgress("train", detail=f"training on {len(facts)} fact(s)"))
    edit_record: dict[str, Any]
    with clock.phase("train"):
        if facts:
            def on_train(p: Any) -> None:
                if p.phase == "train":  # steps over the whole budget (an early stop ends short)
                    emit(RoundProgress("train", (p.epoch - 1) * p.steps_per_epoch + p.step,
                                       p.max_epochs * p.steps_per_epoch, f"epoch {p.epoch}/{p.max_epochs}", p.loss))

            try:
                result = edit(loaded, facts, edit_cfg, progress=on_train, should_stop=should_stop,
                              replay=replay, cache_dir=home.cache_dir)
            except EditCancelled as exc:
                raise RoundCancelled(f"training was stopped: {exc}") from None
            tensors = result.tensors
            summary = result.summary()
            state.loss = list(summary["loss_per_epoch"])
            prompt_format = result.prompt_format
            resolved = getattr(result, "config", None) or config.edit  # per-model defaults filled in
            edit_record = to_dict(resolved) | {
                "lr": result.lr, "prompt_format": prompt_format, "location": result.location.describe(),
                "parameters": list(tensors),
            }
        else:
            # Every fact retracted: the right model is the base itself, i.e. an empty snapshot.
            tensors, summary = {}, {"loss_per_epoch": [], "epochs": 0, "note": "no active facts"}
            resolved = edit_cfg
            prompt_format = resolved.prompt_format
            edit_record = to_dict(resolved) | {"parameters": []}

    scope = None
    if gated and tensors:
        # From the frozen facts' prompts and subjects only: the gates' paraphrases and probes are
        # never seen (nor used to calibrate a similarity threshold).
        from locft.engine.scope import scope_for_facts
        from locft.engine.scoped import tuned_layer_indices

        check_stop()
        emit(RoundProgress("scope", detail=f"the version's scope ({edit_cfg.scope_match})"))
        with clock.phase("scope"):
            scope = scope_for_facts(
                loaded, facts, prompt_format, edit_cfg.scope_match,
                false_positive_rate=edit_cfg.scope_false_positive_rate, layer=edit_cfg.scope_layer,
                tuned_layers=tuned_layer_indices(loaded.model, list(tensors)),
                exclude=probe_prompts + [p for f in facts for p in f.paraphrases],
            )
        edit_record["scope"] = scope.summary()

    check_stop()
    emit(RoundProgress("snapshot", detail="writing the candidate snapshot"))
    with clock.phase("snapshot"):
        name = f"{SNAPSHOT_PREFIX}{state.round_id:06d}-{plan.digest[:8]}"
        snap = save_snapshot(
            home.snapshots_dir, name, tensors, loaded.fingerprint,
            extra={"fact_set_digest": plan.digest, "fact_count": len(facts), "round_id": state.round_id,
                   "parent_version": plan.promoted.id, "edit_config": edit_record, "training": summary},
            scope=scope,
        )
        state.snapshot_dir = snap.path

    with clock.phase("record"):
        version = store.record_version(
            revision_ids=[e.revision_id for e in plan.entries], snapshot_dir=snap.path,
            base_fingerprint=loaded.fingerprint, edit_config=edit_record, parent_id=plan.promoted.id,
            round_id=state.round_id, fact_set_digest=plan.digest, snapshot_sha256=snap.sha256,
            snapshot_size=snap.size, actor=actor,
        )
        state.version_id = version.id
    log.info("round %d: candidate version %d recorded (%s)", state.round_id, version.id, snap.path.name)

    metrics, report = _measure(home, config, plan, loaded, tensors, scope, prompt_format, probe_prompts, clock,
                               emit, check_stop)

    with clock.phase("judge"):
        verdict = judge(config.gates, metrics)
        report = {"reasons": verdict.reasons, "verdict": verdict.to_dict(), **report,
                  "policy": to_dict(config.gates), "training": summary, "round_id": state.round_id}
        check_stop()  # the last moment a stop can still prevent the decision
        store.record_gate_result(version.id, passed=verdict.passed, metrics=metrics.to_dict(), report=report,
                                 round_id=state.round_id, actor=actor)
        state.gated = True
        if not verdict.passed:
            outcome: RoundOutcome = "rejected"
            reason = "rejected: " + "; ".join(verdict.reasons)
        elif config.gates.promotion == "auto":
            store.promote(version.id, actor=actor, reason=f"round {state.round_id}: every gate passed")
            outcome, reason = "promoted", f"version {version.id} promoted: every gate passed"
        else:
            outcome = "candidate"
            reason = f"version {version.id} passed its gates; `locft promote {version.id}` serves it"
        # the round's note: why it was rejected, or how to serve a candidate
        error = reason if outcome in ("rejected", "candidate") else None
        state.decided = (outcome, error)
    log.info("round %d: %s", state.round_id, reason)

    with clock.phase("cleanup"):
        try:  # retention is housekeeping: it must not turn a good round into a failed one
            store.apply_retention(actor=actor)
        except Exception:  # noqa: BLE001
            log.exception("snapshot retention failed (the round itself succeeded)")
    timings = clock.timings()
    _finish(store, state.round_id, outcome, version_id=version.id, timings=timings, loss=state.loss,
            error=error, actor=actor)
    return RoundResult(
        outcome, reason, state.round_id, plan.trigger, version_id=version.id,
        promoted_version_id=store.promoted_version().id, n_facts=len(facts), fact_set_digest=plan.digest,
        verdict=verdict, metrics=metrics, timings=timings, loss_per_epoch=state.loss,
    )


def _probe_prompts(config: LocftConfig, entries: Sequence[FactEntry]) -> list[str]:
    """Locality prompts: the fixed set plus every fact's own probes (deduplicated, in order)."""
    from locft.evaluation.probes import fixed_probe_prompts

    own = [p.prompt for e in entries for p in e.fact.probes]
    return list(dict.fromkeys(fixed_probe_prompts(config.gates.probe_set_size) + own))


def _measure(
    home: Home,
    config: LocftConfig,
    plan: RoundPlan,
    loaded: LoadedModel,
    tensors: dict[str, Any],
    scope: Any,
    prompt_format: str,
    probe_prompts: list[str],
    clock: _Clock,
    emit: ProgressCallback,
    check_stop: Callable[[], None],
) -> tuple[GateMetrics, dict[str, Any]]:
    """Every gate measurement of the candidate, through the scoped model (what users get); returns
    GateMetrics and the report's details."""
    from locft.engine.scoped import answering
    from locft.evaluation.capability import ScopeOnly, base_task_scores, lower_is_better, task_scores
    from locft.evaluation.editing import evaluate_edits, scope_report, token_agreement
    from locft.engine.generate import greedy_generate
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

    def on_eval(label: str, done: int, total: int) -> None:
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

        def on_cap(which: str) -> Callable[[int, int, str], None]:
            return lambda done, total, task: emit(RoundProgress(which, done, total, task))

        def on_requests(which: str) -> Callable[[int, int, str], None]:
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
                                      cap_dir, progress=on_cap("capability"), request_progress=on_requests("capability"),
                                      only_in_scope=only)
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


def _finish(
    store: Store, round_id: int, outcome: str, *, version_id: int | None = None, timings: dict[str, float],
    loss: list[float], error: str | None = None, actor: str | None = None,
) -> None:
    store.finish_round(round_id, outcome, version_id=version_id, error=error, timings=timings,  # type: ignore[arg-type]
                       loss_history=loss, actor=actor)


def _reject_ungated(store: Store, version_id: int, round_id: int, why: str, actor: str | None) -> None:
    """A candidate whose gates never finished must never be promotable without --force."""
    if store.gate_results(version_id):
        return
    store.record_gate_result(version_id, passed=False, metrics={},
                             report={"reasons": [f"round {round_id} {why} before its gates finished"],
                                     "abandoned": True},
                             round_id=round_id, actor=actor)


def _abandon(store: Store, state: _State, outcome: str, error: str | None, clock: _Clock, actor: str | None) -> None:
    """Leave nothing half-done: no unrecorded snapshot, no ungated candidate, no 'running' round."""
    if state.decided is not None:  # stopped during cleanup: the committed decision is the outcome
        log.warning("round %d stopped after its decision (%s): %s", state.round_id, state.decided[0], error)
        outcome, error = state.decided[0], state.decided[1]
    if state.version_id is None and state.snapshot_dir is not None:
        shutil.rmtree(state.snapshot_dir, ignore_errors=True)
        log.info("round %d: removed its unrecorded snapshot %s", state.round_id, state.snapshot_dir)
    if state.version_id is not None and not state.gated:
        _reject_ungated(store, state.version_id, state.round_id, outcome, actor)
    _finish(store, state.round_id, outcome, version_id=state.version_id, timings=clock.timings(), loss=state.loss,
            error=error, actor=actor)
    log.warning("round %d %s: %s", state.round_id, outcome, error)


# ---------------------------------------------------------------------------------------------
# the round lock and crash recovery


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
                _reject_ungated(store, v.id, v.round_id or 0, "stopped", actor)
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


def describe(result: RoundResult) -> str:
    """One line for shells and logs."""
    parts = [f"round {result.round_id}: {result.outcome}"]
    if result.version_id is not None:
        parts.append(f"version {result.version_id}")
    parts.append(result.reason)
    if result.timings.get("total") is not None:
        parts.append(f"{result.timings['total']:.1f} s")
    return " | ".join(parts)


__all__ = [
    "PHASES", "RoundCancelled", "RoundPlan", "RoundProgress", "RoundRecovery", "RoundResult", "describe",
    "hold_round_lock", "plan_round", "record_skipped", "recover_rounds", "run_round",
]
