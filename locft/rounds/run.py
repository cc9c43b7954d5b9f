"""run_round: one round end to end (the phases in locft.rounds' docstring), recorded in the store.

Cancellation: `should_stop()` is polled at every training step and between phases; a stopped
round is recorded as interrupted, its unrecorded snapshot removed and a recorded but ungated
candidate gets a failed gate result, so it can never be promoted without --force.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.config import LocftConfig, to_dict
from locft.errors import LocftError
from locft.home import Home
from locft.policies.gating import judge
from locft.policies.schedule import Trigger
from locft.rounds.measure import measure_candidate, probe_prompts_for
from locft.rounds.outcome import RoundResult
from locft.rounds.phases import PhaseClock, RoundProgress, RoundProgressCallback
from locft.rounds.plan import RoundPlan, plan_round, record_skipped
from locft.rounds.recovery import reject_ungated
from locft.store.rounds import RoundOutcome

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel
    from locft.store import Store

log = logging.getLogger(__name__)

ACTOR = "locft-round"
SNAPSHOT_PREFIX = "round-"


class RoundCancelled(LocftError):
    """should_stop() said stop: the round is abandoned (recorded as interrupted)."""


@dataclass
class _State:
    """What exists so far, so that an abandoned round can be cleaned up exactly."""

    round_id: int
    snapshot_dir: Path | None = None  # written, maybe not yet recorded
    version_id: int | None = None  # recorded
    gated: bool = False
    # the gate decision once it is committed (outcome, reason for a rejection): a stop or crash
    # during cleanup after it must not record the round as interrupted or failed
    decided: tuple[RoundOutcome, str | None] | None = None
    loss: list[float] = field(default_factory=list)


def run_round(
    home: Home,
    config: LocftConfig,
    store: Store,
    *,
    trigger: Trigger = "manual",
    force: bool = False,
    actor: str | None = None,
    request_ids: Sequence[int] = (),
    progress: RoundProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    loaded: LoadedModel | None = None,
) -> RoundResult:
    """Run one round end to end (the phases in locft.rounds' docstring) and record it in the store.

    The caller must hold the home's round lock (`hold_round_lock`), so that no other round runs.
    `loaded`: an already loaded base model to reuse (bench/tests); it is left unchanged.
    Returns the result for promoted / candidate / rejected / skipped / interrupted rounds;
    a failure is recorded as 'failed' and re-raised.
    """
    actor = actor or ACTOR
    emit = progress or (lambda p: None)
    clock = PhaseClock()
    emit(RoundProgress("freeze", detail="freezing the active fact set"))
    with clock.phase("freeze"):
        plan = plan_round(store, config, trigger, force=force)
    if not plan.should_run:
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
        outcome: RoundOutcome = "interrupted" if interrupted else "failed"
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
    clock: PhaseClock,
    actor: str,
    emit: RoundProgressCallback,
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
    probe_prompts = probe_prompts_for(config, plan.entries)
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

    metrics, report = measure_candidate(home, config, plan, loaded, tensors, scope, prompt_format, probe_prompts, clock,
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


def _finish(
    store: Store, round_id: int, outcome: RoundOutcome, *, version_id: int | None = None, timings: dict[str, float],
    loss: list[float], error: str | None = None, actor: str | None = None,
) -> None:
    store.finish_round(round_id, outcome, version_id=version_id, error=error, timings=timings,
                       loss_history=loss, actor=actor)


def _abandon(
    store: Store, state: _State, outcome: RoundOutcome, error: str | None, clock: PhaseClock, actor: str | None
) -> None:
    """Leave nothing half-done: no unrecorded snapshot, no ungated candidate, no 'running' round."""
    if state.decided is not None:  # stopped during cleanup: the committed decision is the outcome
        log.warning("round %d stopped after its decision (%s): %s", state.round_id, state.decided[0], error)
        outcome, error = state.decided[0], state.decided[1]
    if state.version_id is None and state.snapshot_dir is not None:
        shutil.rmtree(state.snapshot_dir, ignore_errors=True)
        log.info("round %d: removed its unrecorded snapshot %s", state.round_id, state.snapshot_dir)
    if state.version_id is not None and not state.gated:
        reject_ungated(store, state.version_id, state.round_id, outcome, actor)
    _finish(store, state.round_id, outcome, version_id=state.version_id, timings=clock.timings(), loss=state.loss,
            error=error, actor=actor)
    log.warning("round %d %s: %s", state.round_id, outcome, error)
