"""The same store on PostgreSQL. Opt-in: set LOCFT_TEST_POSTGRES_URL to an EMPTY database
(e.g. postgresql+psycopg://user@/locft_test?host=/tmp&port=5432) with psycopg installed."""

from __future__ import annotations

import os

import pytest

from locft.config import StoreConfig
from locft.errors import ConflictError, StoreError
from locft.facts import EditFact
from locft.home import Home
from locft.readers import FactRecord
from locft.store import Store
from tests.store.helpers import new_version

URL = os.environ.get("LOCFT_TEST_POSTGRES_URL")


@pytest.mark.skipif(not URL, reason="set LOCFT_TEST_POSTGRES_URL to run against PostgreSQL")
def test_the_store_on_postgresql(home: Home) -> None:
    config = StoreConfig(database_url=URL)
    with Store.open(home, config, create=True) as store:
        assert store.add_fact(EditFact("Q?", "A")).status == "added"
        assert store.add_fact(EditFact("q", "a.")).status == "duplicate"
        with pytest.raises(ConflictError):
            store.add_fact(EditFact("Q?", "B"))
        summary = store.import_facts([FactRecord(i + 1, EditFact(f"P{i}?", f"A{i}")) for i in range(50)])
        assert summary.written and len(summary.added) == 50
        store.revise_fact(1, answer="C")
        store.retract_fact(2)
        good = new_version(store, "pg-good", passed=True)
        bad = new_version(store, "pg-bad", passed=False)
        store.promote(good.id)
        with pytest.raises(StoreError, match="failed its gates"):
            store.promote(bad.id)
        assert store.rollback().version_id == 0
        assert {v.id: v.state for v in store.list_versions()} == {0: "promoted", good.id: "retired", bad.id: "rejected"}
        assert store.count_facts().active == 50
        claimed = store.request_round() and store.claim_round_request()
        assert claimed is not None
        round_ = store.start_round("request", request_ids=claimed.ids)
        assert store.finish_round(round_.id, "skipped").outcome == "skipped"
    with Store.open(home, config) as store:
        assert store.applied_migrations == ()
