"""locft.rounds on the tiny model with real SQLite stores: one round as a library call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from locft.config import ModelConfig, load_config
from locft.engine.model_io import LoadedModel, load_base
from locft.facts import EditFact, Probe
from locft.home import Home
from locft.locks import LockHeld
from locft.rounds.phases import PHASES, RoundProgress
from locft.rounds.plan import plan_round
from locft.rounds.recovery import hold_round_lock, recover_rounds
from locft.rounds.run import run_round
from locft.store import Store
from tests.round_helpers import ABSURD_LR, FACTS, make_home

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """Loaded once: run_round leaves a given model exactly as it found it."""
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Home:
    return make_home(tmp_path / "home", tiny_model_dir)


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    with Store.open(home) as s:
        yield s


def add(store: Store, facts: list[tuple[str, str]]) -> None:
    for prompt, answer in facts:
        store.add_fact(EditFact(prompt, answer, paraphrases=(f"{prompt[:-3]}:",),
                                probes=(Probe("The first month of the year is"),)))


def run(home: Home, store: Store, loaded: LoadedModel, **kw: object):
    with hold_round_lock(home, store):
        return run_round(home, load_config(home.root), store, loaded=loaded, **kw)  # type: ignore[arg-type]


def test_round_trains_gates_promotes_and_records_everything(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:3])
    seen: list[RoundProgress] = []
    result = run(home, store, loaded, progress=seen.append)

    assert result.outcome == "promoted", result.reason
    assert result.version_id == 1 and store.promoted_version().id == 1
    assert result.metrics is not None and result.metrics.reliability == 1.0 and result.metrics.n_facts == 3
    # the round row: outcome, per-phase timings, loss per epoch
    r = store.get_round(result.round_id)  # type: ignore[arg-type]
    assert r.outcome == "promoted" and r.version_id == 1 and r.trigger == "manual"
    phases = {"freeze", "load", "train", "snapshot", "record", "base_probes", "evaluate", "judge", "total"}
    assert phases <= set(r.timings or {})
    assert r.loss_history and len(r.loss_history) == 30
    # the version: its exact facts, a verified snapshot, the resolved edit config, the gate report
    v = store.get_version(1)
    assert v.fact_count == 3 and v.state == "promoted" and v.round_id == r.id
    assert v.edit_config["prompt_format"] == "raw" and v.edit_config["lr"] == 1e-2
    store.verify_version_snapshot(1)
    assert v.gate is not None and v.gate.passed
    assert {c["name"] for c in v.gate.report["verdict"]["checks"]} >= {"reliability", "locality", "retention_drop"}
    assert len(v.gate.report["correct_revision_ids"]) == 3
    assert v.gate.report["evaluation"]["n_fixed_probes"] == 8
    by_source = v.gate.report["evaluation"]["token_locality_by_source"]
    assert by_source["fixed_probe_set"] is not None and by_source["facts_own_probes"] is not None
    mixed = (8 * by_source["fixed_probe_set"] + 1 * by_source["facts_own_probes"]) / 9
    assert mixed == pytest.approx(result.metrics.locality)
    assert {p.phase for p in seen} >= {"freeze", "load", "train", "snapshot", "evaluate"}
    # reported, and timed, in PHASES' order
    order = [PHASES.index(p.phase) for p in seen]
    assert order == sorted(order) and set(r.timings or {}) - {"total"} <= set(PHASES)
    # the fixed probe set's base answers are cached per base fingerprint
    assert list((home.cache_dir / "probes").glob("*.json"))


def test_unchanged_fact_set_is_skipped_and_recorded(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:2])
    assert run(home, store, loaded).outcome == "promoted"
    again = run(home, store, loaded, trigger="request")
    assert again.outcome == "skipped" and "no change since version 1" in again.reason
    assert store.get_round(again.round_id).outcome == "skipped"  # type: ignore[arg-type]
    assert len(store.list_versions()) == 2  # nothing was trained
    forced = run(home, store, loaded, force=True)
    assert forced.outcome == "promoted" and forced.version_id == 2


def test_failed_gate_rejects_and_leaves_the_pointer(tmp_path: Path, tiny_model_dir: Path, loaded: LoadedModel) -> None:
    # scope "always": the absurd learning rate breaks unrelated answers only where the edit applies
    home = make_home(tmp_path / "always", tiny_model_dir, scope="always")
    with Store.open(home) as store:
        _reject_after_an_absurd_lr(home, store, loaded)


def _reject_after_an_absurd_lr(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:2])
    assert run(home, store, loaded).outcome == "promoted"
    text = home.config_path.read_text().replace("lr = 0.01", f"lr = {ABSURD_LR}")
    home.config_path.write_text(text)
    add(store, FACTS[2:3])
    result = run(home, store, loaded)
    assert result.outcome == "rejected", result.reason
    assert result.verdict is not None and result.verdict.reasons
    assert store.promoted_version().id == 1
    assert store.get_version(result.version_id).state == "rejected"  # type: ignore[arg-type]
    assert "rejected" in (store.get_round(result.round_id).error or "")  # type: ignore[arg-type]
    # automatic triggers do not retrain the set that was just rejected; a request may
    assert not plan_round(store, load_config(home.root), "cron").should_run
    assert plan_round(store, load_config(home.root), "request").should_run


def test_second_round_measures_retention_of_what_the_promoted_version_knew(
    home: Home, store: Store, loaded: LoadedModel
) -> None:
    add(store, FACTS[:3])
    assert run(home, store, loaded).outcome == "promoted"
    store.retract_fact(1)  # retracted facts are not "retained": they leave the next version
    add(store, FACTS[3:])
    result = run(home, store, loaded)
    assert result.metrics is not None
    assert result.metrics.n_retained == 2 and result.metrics.retention is not None
    assert result.metrics.promoted_version == 1
    assert {e.fact_id for e in store.version_facts(result.version_id)} == {2, 3, 4}  # type: ignore[arg-type]


def test_manual_policy_leaves_a_candidate(home: Home, store: Store, loaded: LoadedModel) -> None:
    home.config_path.write_text(home.config_path.read_text().replace("[gates]\n", '[gates]\npromotion = "manual"\n'))
    add(store, FACTS[:2])
    result = run(home, store, loaded)
    assert result.outcome == "candidate"
    stored = store.get_round(result.round_id)  # type: ignore[arg-type]
    assert (stored.outcome, stored.version_id) == ("candidate", result.version_id)
    assert f"locft promote {result.version_id}" in (stored.error or "")
    assert store.promoted_version().id == 0
    assert store.get_version(result.version_id).state == "candidate"  # type: ignore[arg-type]
    store.promote(result.version_id)  # type: ignore[arg-type]  # passed its gates: no --force needed


def test_stop_during_training_interrupts_and_leaves_nothing(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:2])
    calls = {"n": 0}

    def stop_after_some_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    result = run(home, store, loaded, should_stop=stop_after_some_steps)
    assert result.outcome == "interrupted"
    assert store.get_round(result.round_id).outcome == "interrupted"  # type: ignore[arg-type]
    assert result.version_id is None and len(store.list_versions()) == 1
    assert not [p for p in home.snapshots_dir.iterdir()]


def test_stop_after_the_candidate_is_recorded_fails_its_gate(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:2])
    phases: list[str] = []

    def stop_once_recorded() -> bool:
        return "base_probes" in phases

    result = run(home, store, loaded, should_stop=stop_once_recorded, progress=lambda p: phases.append(p.phase))
    assert result.outcome == "interrupted" and result.version_id == 1
    v = store.get_version(1)
    assert v.state == "rejected" and v.gate is not None and v.gate.report.get("abandoned")
    assert store.promoted_version().id == 0
    with pytest.raises(Exception, match="failed its gates"):
        store.promote(1)


def test_ctrl_c_during_cleanup_keeps_the_committed_promotion(
    home: Home, store: Store, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(store, FACTS[:2])

    def interrupted_retention(**kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "apply_retention", interrupted_retention)
    with pytest.raises(KeyboardInterrupt):
        run(home, store, loaded)
    assert store.promoted_version().id == 1
    last = store.list_rounds()[0]
    assert last.outcome == "promoted" and last.version_id == 1 and last.error is None


def test_capability_gate_runs_lm_eval_and_caches_base_scores(home: Home, store: Store, loaded: LoadedModel) -> None:
    # scope "always": every item runs through the candidate (a gated scope runs only the items it touches)
    text = home.config_path.read_text().replace(
        "capability_tasks = []", 'capability_tasks = ["arc_easy"]\ncapability_limit = 4\nmax_capability_drop = 1.0'
    ) + '\n[serve]\nscope = "always"\n'
    home.config_path.write_text(text)
    add(store, FACTS[:2])
    seen: list[RoundProgress] = []
    result = run(home, store, loaded, progress=seen.append)
    assert result.outcome == "promoted", result.reason
    assert result.metrics is not None
    assert set(result.metrics.capability) == {"arc_easy"} and set(result.metrics.base_capability) == {"arc_easy"}
    # within each model's task: the answer choices scored so far (4 ARC-Easy items have 16 choices)
    scored = [(p.done, p.total) for p in seen if p.phase == "capability" and "answer choices" in p.detail]
    assert scored and scored[-1][0] == scored[-1][1] >= 4 and scored == sorted(scored)
    assert "capability:arc_easy" in {c.name for c in result.verdict.checks}  # type: ignore[union-attr]
    assert result.timings["capability"] > 0 and result.timings["capability_base"] > 0
    # the paired gate's counts: the same 4 items for base and candidate, consistent with the scores
    pairs = result.metrics.capability_pairs["arc_easy"]
    assert pairs.n_items == 4
    drop = result.metrics.base_capability["arc_easy"] - result.metrics.capability["arc_easy"]
    assert (pairs.lost - pairs.gained) / 4 == pytest.approx(drop)
    stored = store.get_version(result.version_id).gate  # type: ignore[arg-type]
    assert stored is not None and stored.report["capability"]["pairs"]["arc_easy"]["n_items"] == 4
    assert stored.report["capability"]["test"] == "paired"
    cached = list((home.cache_dir / "capability-base").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["key"]["task"] == "arc_easy"


def test_under_a_scope_the_capability_gate_runs_only_the_items_it_touches(
        home: Home, store: Store, loaded: LoadedModel) -> None:
    home.config_path.write_text(home.config_path.read_text().replace(
        "capability_tasks = []", 'capability_tasks = ["arc_easy"]\ncapability_limit = 4'))
    add(store, FACTS[:2])  # about Wakanda and Zorblax: no ARC-Easy item names them
    result = run(home, store, loaded)
    assert result.outcome == "promoted", result.reason and result.metrics is not None
    assert result.metrics.capability == result.metrics.base_capability  # the base's answers, by construction
    report = store.get_version(result.version_id).gate.report  # type: ignore[union-attr,arg-type]
    assert report["capability"]["scope_items"] == {"items_scored": {"arc_easy": 0}, "items_total": {"arc_easy": 4}}
    assert report["capability"]["pairs"]["arc_easy"]["n_items"] == 4


def test_stop_during_the_capability_gate_interrupts_it(home: Home, store: Store, loaded: LoadedModel) -> None:
    import lm_eval.models.huggingface as hf

    bar_before = hf.tqdm
    home.config_path.write_text(home.config_path.read_text().replace(
        "capability_tasks = []", 'capability_tasks = ["arc_easy"]\ncapability_limit = 6'))
    add(store, FACTS[:2])
    phases: list[str] = []
    result = run(home, store, loaded, progress=lambda p: phases.append(p.phase),
                 should_stop=lambda: "capability" in phases)  # inside lm-eval, at its first report
    assert result.outcome == "interrupted" and phases[-1] == "capability"
    assert store.get_version(result.version_id).state == "rejected"  # type: ignore[arg-type]
    assert hf.tqdm is bar_before  # lm-eval left as found


def test_retracting_every_fact_builds_an_empty_version(home: Home, store: Store, loaded: LoadedModel) -> None:
    add(store, FACTS[:1])
    assert run(home, store, loaded).outcome == "promoted"
    store.retract_fact(1)
    result = run(home, store, loaded)
    assert result.outcome == "promoted", result.reason
    assert store.get_version(result.version_id).fact_count == 0  # type: ignore[arg-type]


def test_recovery_closes_dead_rounds_and_sweeps_leftovers(home: Home, store: Store) -> None:
    dead = store.start_round("cron")  # a round whose process was killed
    orphan = home.snapshots_dir / "round-000099-deadbeef"
    orphan.mkdir(parents=True)
    tmp = home.snapshots_dir / ".tmp-round-000099-x"
    tmp.mkdir()
    with hold_round_lock(home, store, recover=False):
        rec = recover_rounds(store, home)
    assert rec.rounds == (dead.id,)
    assert store.get_round(dead.id).outcome == "interrupted"
    assert not orphan.exists() and not tmp.exists()


def test_round_lock_refuses_a_second_round(home: Home, store: Store) -> None:
    with hold_round_lock(home, store):
        with pytest.raises(LockHeld):
            with hold_round_lock(home, store):
                pass


def test_replay_never_trains_on_a_locality_probe(home: Home, store: Store, loaded: LoadedModel) -> None:
    from locft.engine.replay import _key, default_replay_prompts

    first_generic = default_replay_prompts(1)[0]  # what the replay pool would start with
    text = home.config_path.read_text().replace("[edit]\n", "[edit]\nreplay_ratio = 1.0\nreplay_pool_size = 6\n")
    home.config_path.write_text(text)
    store.add_fact(EditFact(*FACTS[0], probes=(Probe(first_generic),)))
    result = run(home, store, loaded)
    assert result.outcome in ("promoted", "rejected")
    assert result.timings["replay"] > 0
    [cache] = list((home.cache_dir / "replay").glob("*.json"))
    replayed = {_key(p) for p, _ in json.loads(cache.read_text())["items"]}
    assert len(replayed) == 6 and _key(first_generic) not in replayed


def test_a_fact_set_whose_round_failed_is_not_retried_by_automatic_triggers(home: Home, store: Store) -> None:
    add(store, FACTS[:2])
    config = load_config(home.root)
    digest = plan_round(store, config, "cron").digest
    assert plan_round(store, config, "cron").should_run
    assert not plan_round(store, config, "cron", avoid_digest=digest).should_run
    assert plan_round(store, config, "cron", avoid_digest="another set").should_run
    assert plan_round(store, config, "request", avoid_digest=digest).should_run  # a person may retry


def test_version_records_the_resolved_edit_config(home: Home, store: Store, loaded: LoadedModel) -> None:
    home.config_path.write_text(home.config_path.read_text().replace("batch_size = 4\n", ""))
    add(store, FACTS[:1])
    result = run(home, store, loaded)
    recorded = store.get_version(result.version_id).edit_config  # type: ignore[arg-type]
    assert recorded["batch_size"] is not None and recorded["lr"] == 1e-2 and recorded["prompt_format"] == "raw"
    assert recorded["location"] == "model.layers.3.mlp.down_proj.weight"


def test_each_version_carries_the_scope_of_its_facts_and_a_retracted_fact_leaves_it(
        home: Home, store: Store, loaded: LoadedModel) -> None:
    from locft.engine.snapshot import load_snapshot

    add(store, FACTS[:3])
    first = run(home, store, loaded)
    assert first.outcome == "promoted", first.reason
    scope = load_snapshot(store.snapshot_dir(first.version_id)).scope  # type: ignore[arg-type]
    assert scope is not None and scope.match == "subject"
    assert scope.names_a_subject("Tell me about Wakanda") and scope.names_a_subject("Zorblax is")
    assert not scope.names_a_subject("The first month of the year is")  # the facts' probe
    report = store.gate_results(first.version_id)[-1].report  # type: ignore[arg-type]
    coverage = report["evaluation"]["scope"]
    assert coverage["edit_prompts_in_scope"] == 1.0 and coverage["false_positive_rate"] == 0.0
    assert coverage["recall"] == 1.0  # the paraphrases name the subject too

    store.retract_fact(1)  # "The capital of Wakanda is"
    second = run(home, store, loaded)
    assert second.outcome == "promoted", second.reason
    scope = load_snapshot(store.snapshot_dir(second.version_id)).scope  # type: ignore[arg-type]
    assert scope is not None and not scope.names_a_subject("Tell me about Wakanda")
    assert scope.names_a_subject("Zorblax is") and len(scope.keys) == 2
