from __future__ import annotations

import threading

import pytest

from locft.errors import NotFoundError, StoreError
from locft.home import Home
from locft.store import Store
from tests.store.helpers import add_facts, new_version


def test_round_lifecycle_and_last_round(store: Store) -> None:
    assert store.last_round() is None
    r = store.start_round("cron", actor="locftd")
    assert (r.trigger, r.outcome, r.finished_at) == ("cron", "running", None)
    assert store.last_round() == r
    done = store.finish_round(r.id, "rejected", version_id=None, timings={"train_s": 1.5},
                              loss_history=[[0, 2.5], [1, 0.1]], error=None)
    assert done.outcome == "rejected" and done.finished_at is not None and done.seconds is not None
    assert store.get_round(r.id).timings == {"train_s": 1.5}
    assert store.get_round(r.id).loss_history == [[0, 2.5], [1, 0.1]]
    with pytest.raises(StoreError, match="already finished"):
        store.finish_round(r.id, "promoted")
    with pytest.raises(StoreError, match="unknown round outcome"):
        store.finish_round(store.start_round("manual").id, "exploded")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="unknown round trigger"):
        store.start_round("whenever")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        store.finish_round(99, "failed")
    assert [e.kind for e in store.list_events(round_id=r.id)] == ["round.finished", "round.started"]


def test_running_rounds_are_marked_interrupted_after_a_crash(store: Store) -> None:
    finished = store.start_round("cron")
    store.finish_round(finished.id, "skipped")
    crashed = store.start_round("request")
    recovery = store.close_dead_rounds(actor="locftd")
    assert recovery.undecided_rounds == (crashed.id,)
    again = store.get_round(crashed.id)
    assert again.outcome == "interrupted" and again.error and again.finished_at is not None
    assert store.get_round(finished.id).outcome == "skipped"
    assert store.close_dead_rounds().undecided_rounds == ()


def test_requests_are_claimed_once_and_together(store: Store) -> None:
    assert store.claim_round_request() is None
    a = store.request_round(actor="ann", reason="urgent fix")
    b = store.request_round(actor="bob")
    assert [r.id for r in store.open_round_requests()] == [a.id, b.id]
    claimed = store.claim_round_request()
    assert claimed is not None and claimed.ids == (a.id, b.id) and claimed.first.reason == "urgent fix"
    assert all(r.claimed_at is not None for r in claimed.requests)
    assert store.claim_round_request() is None and store.open_round_requests() == []
    r = store.start_round("request", request_ids=claimed.ids)
    assert r.trigger == "request"
    # a claim whose round never started is reopened at recovery; linked ones are not
    c = store.request_round()
    assert store.claim_round_request() is not None
    assert store.close_dead_rounds().released_requests == (c.id,)
    assert [x.id for x in store.open_round_requests()] == [c.id]


def test_concurrent_claims_never_share_a_request(home: Home) -> None:
    with Store.open(home, create=True) as setup:
        for _ in range(20):
            setup.request_round()
    got: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def claimer() -> None:
        with Store.open(home, sweep_orphans=False) as s:
            for _ in range(10):
                c = s.claim_round_request()
                if c is not None:
                    with lock:
                        got.append(c.ids)
                s.request_round()  # keep new requests coming while others claim

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for claim in got for i in claim]
    assert len(ids) == len(set(ids)), "a request was claimed twice"
    with Store.open(home) as s:
        assert len(ids) + len(s.open_round_requests()) == 20 + 40


def test_a_round_that_died_after_its_decision_keeps_that_outcome(store: Store) -> None:

    add_facts(store, 2)
    promoted_round = store.start_round("cron")
    promoted = new_version(store, "v-promoted", passed=True, round_id=promoted_round.id)
    store.promote(promoted.id)  # the process dies here, before finish_round
    rejected_round = store.start_round("cron")
    rejected = new_version(store, "v-rejected", passed=False, round_id=rejected_round.id)
    gated_round = store.start_round("cron")  # passed, manual promotion: no decision committed
    new_version(store, "v-waiting", passed=True, round_id=gated_round.id)
    early_round = store.start_round("request")  # died while training: no version at all

    recovery = store.close_dead_rounds(actor="locftd")
    assert recovery.decided_rounds == (promoted_round.id, rejected_round.id)
    assert recovery.undecided_rounds == (gated_round.id, early_round.id)
    got = store.get_round(promoted_round.id)
    assert (got.outcome, got.version_id) == ("promoted", promoted.id) and "after version" in (got.error or "")
    assert (store.get_round(rejected_round.id).outcome, store.get_round(rejected_round.id).version_id) == (
        "rejected", rejected.id)
    assert store.get_round(gated_round.id).outcome == "interrupted"
    assert store.get_round(early_round.id).outcome == "interrupted"
    assert store.promoted_version().id == promoted.id


def test_a_crash_the_caller_saw_closes_undecided_rounds_as_failed(store: Store) -> None:
    crashed = store.start_round("cron")
    recovery = store.close_dead_rounds(outcome="failed", error="worker exited with -9")
    assert recovery.undecided_rounds == (crashed.id,)
    got = store.get_round(crashed.id)
    assert (got.outcome, got.error) == ("failed", "worker exited with -9")
    assert [e.kind for e in store.list_events(round_id=crashed.id)][0] == "round.finished"
