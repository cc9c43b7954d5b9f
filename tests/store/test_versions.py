from __future__ import annotations

import pytest
from sqlalchemy import text

from locft.errors import NotFoundError, SnapshotError, StoreError
from locft.facts import EditFact, fact_set_digest
from locft.home import Home
from locft.store import Store
from tests.store.helpers import add_facts, make_snapshot, new_version


def test_a_new_store_serves_version_0_the_base_model(store: Store) -> None:
    v0 = store.promoted_version()
    assert (v0.id, v0.state, v0.is_base, v0.parent_id, v0.base_fingerprint) == (0, "promoted", True, None, None)
    assert v0.fact_count == 0 and v0.snapshot_path is None
    assert [(p.action, p.version_id) for p in store.promotion_history()] == [("init", 0)]


def test_record_version_keeps_the_exact_fact_set(store: Store, home: Home) -> None:
    add_facts(store, 3)
    entries = store.active_facts()
    snap = make_snapshot(home, "v1-abc", payload=b"tensor bytes")
    v = store.record_version(
        revision_ids=[e.revision_id for e in entries], snapshot_dir=snap, base_fingerprint="fp",
        edit_config={"lr": 0.005}, fact_set_digest=fact_set_digest(e.fact for e in entries), round_id=None,
    )
    assert (v.id, v.parent_id, v.state, v.fact_count) == (1, 0, "candidate", 3)
    assert v.snapshot_path == "snapshots/v1-abc"
    import hashlib

    assert v.snapshot_sha256 == hashlib.sha256(b"tensor bytes").hexdigest() and v.snapshot_size == 12
    assert v.fact_set_digest == fact_set_digest(e.fact for e in entries)
    assert store.version_facts(v.id) == entries
    assert store.snapshot_dir(v.id) == snap
    assert store.promoted_version().base_fingerprint == "fp"  # version 0 learnt it
    store.verify_version_snapshot(v.id)
    (snap / "tensors.safetensors").write_bytes(b"tampered")
    with pytest.raises(SnapshotError, match="corrupted"):
        store.verify_version_snapshot(v.id)


def test_record_version_refusals(store: Store, home: Home) -> None:
    add_facts(store, 2)
    entries = store.active_facts()
    ids = [e.revision_id for e in entries]
    ok = dict(base_fingerprint="fp", edit_config={})
    with pytest.raises(SnapshotError, match="does not exist"):
        store.record_version(revision_ids=ids, snapshot_dir=home.snapshots_dir / "missing", **ok)
    with pytest.raises(NotFoundError, match="unknown fact revision"):
        store.record_version(revision_ids=[999], snapshot_dir=make_snapshot(home, "a"), **ok)
    with pytest.raises(StoreError, match="digest"):
        store.record_version(revision_ids=ids, snapshot_dir=make_snapshot(home, "b"), fact_set_digest="0" * 64, **ok)
    store.record_version(revision_ids=ids, snapshot_dir=make_snapshot(home, "c"), **ok)
    with pytest.raises(StoreError, match="another LOCFT_HOME"):
        store.record_version(revision_ids=ids, snapshot_dir=make_snapshot(home, "d"), base_fingerprint="other",
                             edit_config={})
    with pytest.raises(StoreError, match="already belongs"):
        store.record_version(revision_ids=ids, snapshot_dir=home.snapshots_dir / "c", **ok)
    assert [v.id for v in store.list_versions()] == [1, 0]


def test_versions_are_immutable_in_the_database(store: Store) -> None:
    add_facts(store, 1)
    v = new_version(store, "v1", passed=True)  # rows in every table the statements touch
    for sql in ("UPDATE version SET fact_count = 5", "UPDATE version SET base_fingerprint = 'x'",
                "DELETE FROM version", "DELETE FROM version_fact", "UPDATE gate_result SET passed = TRUE"):
        with pytest.raises(Exception, match="immutable|never|append-only"):
            with store._engine.begin() as conn:
                conn.execute(text(sql))
    assert store.get_version(v.id).fact_count == 1


def test_derived_states_and_pointer_moves(store: Store) -> None:
    add_facts(store, 2)
    good = new_version(store, "good", passed=True)
    bad = new_version(store, "bad", passed=False)
    fresh = new_version(store, "fresh")
    states = {v.id: v.state for v in store.list_versions()}
    assert states == {0: "promoted", good.id: "candidate", bad.id: "rejected", fresh.id: "candidate"}

    move = store.promote(good.id, actor="ann", reason="looks fine")
    assert (move.version_id, move.previous_version_id, move.changed, move.forced) == (good.id, 0, True, False)
    assert store.promote(good.id).changed is False
    states = {v.id: v.state for v in store.list_versions()}
    assert states == {0: "retired", good.id: "promoted", bad.id: "rejected", fresh.id: "candidate"}
    assert sum(1 for v in store.list_versions() if v.state == "promoted") == 1


def test_promoting_failed_or_ungated_needs_force(store: Store) -> None:
    add_facts(store, 1)
    bad = new_version(store, "bad", passed=False)
    fresh = new_version(store, "fresh")
    with pytest.raises(StoreError, match=r"failed its gates \(reliability 0.50 < 0.95\).*--force"):
        store.promote(bad.id)
    with pytest.raises(StoreError, match="has not been gated"):
        store.promote(fresh.id)
    assert store.promoted_version().id == 0
    move = store.promote(bad.id, force=True, actor="ann")
    assert move.forced and store.promoted_version().id == bad.id
    event = store.list_events(kind="version.promoted")[0]
    assert event.payload["forced"] is True and event.actor == "ann"
    with pytest.raises(NotFoundError, match="no version 42"):
        store.promote(42)


def test_rollback_walks_back_through_promotions(store: Store) -> None:
    add_facts(store, 1)
    v1 = new_version(store, "v1", passed=True)
    v2 = new_version(store, "v2", passed=True)
    v3 = new_version(store, "v3", passed=True)
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    for v in (v1, v2, v3):
        store.promote(v.id)
    assert store.rollback(actor="ann").version_id == v2.id
    assert store.rollback().version_id == v1.id  # not back to v3
    assert store.rollback().version_id == 0
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    assert store.rollback(to=v3.id).version_id == v3.id
    with pytest.raises(StoreError, match="already promoted"):
        store.rollback(to=v3.id)
    v4 = new_version(store, "v4", passed=True)
    with pytest.raises(StoreError, match="never promoted"):
        store.rollback(to=v4.id)
    with pytest.raises(NotFoundError):
        store.rollback(to=99)
    states = {v.id: v.state for v in store.list_versions()}
    assert states == {0: "retired", v1.id: "retired", v2.id: "retired", v3.id: "promoted", v4.id: "candidate"}
    kinds = [e.kind for e in store.list_events(kind="version.")]
    assert kinds.count("version.rolled_back") == 4 and kinds.count("version.promoted") == 3


def test_cannot_serve_a_version_whose_snapshot_is_gone(store: Store, home: Home) -> None:
    add_facts(store, 1)
    v1 = new_version(store, "v1", passed=True)
    import shutil

    shutil.rmtree(home.snapshots_dir / "v1")
    assert store.get_version(v1.id).snapshot_present is False
    with pytest.raises(SnapshotError, match="is gone"):
        store.promote(v1.id)
    assert store.promoted_version().id == 0


def test_diff_versions(store: Store) -> None:
    a, b, c = add_facts(store, 3)
    v1 = new_version(store, "v1", passed=True)
    store.revise_fact(b, answer="changed")
    store.retract_fact(c)
    d = store.add_fact(EditFact("new?", "fact")).fact_id
    v2 = new_version(store, "v2", passed=True)
    diff = store.diff_versions(v1.id, v2.id)
    assert [r.fact_id for r in diff.added] == [d]
    assert [r.fact_id for r in diff.removed] == [c]
    assert [(ch.fact_id, ch.before.answer, ch.after.answer) for ch in diff.changed] == [(b, "answer 1", "changed")]
    back = store.diff_versions(v2.id, v1.id)
    assert [r.fact_id for r in back.added] == [c] and [r.fact_id for r in back.removed] == [d]
    assert [r.fact_id for r in store.diff_versions(0, v1.id).added] == [a, b, c]
    with pytest.raises(NotFoundError):
        store.diff_versions(0, 7)


def test_gate_results_are_appended_and_the_newest_counts(store: Store) -> None:
    add_facts(store, 1)
    v = new_version(store, "v", passed=False)
    store.record_gate_result(v.id, passed=True, metrics={"reliability": 0.99}, report={"reasons": []})
    assert [g.passed for g in store.gate_results(v.id)] == [False, True]
    info = store.get_version(v.id)
    assert info.state == "candidate" and info.gate is not None and info.gate.metrics == {"reliability": 0.99}
    with pytest.raises(NotFoundError):
        store.record_gate_result(99, passed=True, metrics={})
    kinds = [e.kind for e in store.list_events(version_id=v.id)]
    assert kinds == ["version.gated", "version.rejected", "version.gated", "version.recorded"]


def test_the_audit_log_tells_the_whole_story(store: Store) -> None:
    fid = store.add_fact(EditFact("Q?", "A"), author="ann").fact_id
    r = store.start_round("manual", actor="ann")
    v = new_version(store, "v1", passed=True)
    store.promote(v.id, actor="locftd", reason="gates passed")
    store.finish_round(r.id, "promoted", version_id=v.id, actor="locftd")
    store.rollback(actor="bob", reason="bad answers")
    events = list(reversed(store.list_events(limit=None)))
    assert [e.kind for e in events] == [
        "store.created", "fact.added", "round.started", "base.fingerprint_recorded", "version.recorded",
        "version.gated", "version.promoted", "round.finished", "version.rolled_back",
    ]
    by_kind = {e.kind: e for e in events}
    assert by_kind["fact.added"].fact_id == fid and by_kind["fact.added"].actor == "ann"
    assert by_kind["version.promoted"].payload == {"previous_version_id": 0, "forced": False, "reason": "gates passed"}
    assert by_kind["version.rolled_back"].version_id == 0 and by_kind["version.rolled_back"].actor == "bob"
    assert by_kind["version.rolled_back"].payload["previous_version_id"] == v.id
    assert by_kind["round.finished"].payload["outcome"] == "promoted" and by_kind["round.finished"].round_id == r.id
    assert [p.action for p in store.promotion_history()] == ["init", "promote", "rollback"]
