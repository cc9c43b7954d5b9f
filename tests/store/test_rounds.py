from __future__ import annotations

import threading

import pytest

from locft.errors import NotFoundError, StoreError
from locft.home import Home
from locft.store import Store


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
    recovery = store.mark_running_rounds_interrupted(actor="locftd")
    assert recovery.interrupted_rounds == (crashed.id,)
    again = store.get_round(crashed.id)
    assert again.outcome == "interrupted" and again.error and again.finished_at is not None
    assert store.get_round(finished.id).outcome == "skipped"
    assert store.mark_running_rounds_interrupted().interrupted_rounds == ()


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
    assert store.mark_running_rounds_interrupted().released_requests == (c.id,)
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
