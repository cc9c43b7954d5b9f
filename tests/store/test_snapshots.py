from __future__ import annotations

import dataclasses

from locft.config import load_config
from locft.home import Home
from locft.store import Store
from tests.store.helpers import add_facts, make_snapshot, new_version


def test_sweep_removes_old_orphans_and_tmp_leftovers_only(store: Store, home: Home) -> None:
    add_facts(store, 1)
    kept = new_version(store, "v1", passed=True)
    store.promote(kept.id)
    old_orphan = make_snapshot(home, "crashed-before-row", age_s=7200)
    young_orphan = make_snapshot(home, "row-being-written", age_s=5)
    old_tmp = make_snapshot(home, ".tmp-v9-xyz", age_s=7200)
    young_tmp = make_snapshot(home, ".tmp-v10-abc", age_s=5)
    (home.snapshots_dir / "README").write_text("not a snapshot")
    removed = store.sweep_orphan_snapshots(min_age_seconds=3600)
    assert sorted(p.name for p in removed) == sorted([old_orphan.name, old_tmp.name])
    left = sorted(p.name for p in home.snapshots_dir.iterdir())
    assert left == sorted([".tmp-v10-abc", "README", "row-being-written", "v1"])
    assert young_orphan.exists() and young_tmp.exists()
    assert store.get_version(kept.id).snapshot_present


def test_open_sweeps_unless_a_round_is_running(home: Home) -> None:
    with Store.open(home, create=True) as store:
        store.start_round("manual")
    orphan = make_snapshot(home, "orphan", age_s=7200)
    Store.open(home).close()
    assert orphan.exists()  # a running round may be about to record it
    with Store.open(home) as store:
        store.close_dead_rounds()
    Store.open(home).close()
    assert not orphan.exists()


def test_retention_deletes_files_never_rows(home: Home) -> None:
    config = dataclasses.replace(load_config(home.root).store, keep_promoted=2, keep_rejected=1)  # on either backend
    with Store.open(home, config, create=True) as store:
        add_facts(store, 1)
        promoted = []
        for i in range(4):
            v = new_version(store, f"p{i}", passed=True)
            store.promote(v.id)
            promoted.append(v.id)
        rejected = [new_version(store, f"r{i}", passed=False).id for i in range(3)]
        candidate = new_version(store, "c").id

        dry = store.apply_retention(dry_run=True)
        assert dry.deleted == () and list(dry.plan.delete) == promoted[:2] + rejected[:2]
        assert all((home.snapshots_dir / f"p{i}").exists() for i in range(4))

        result = store.apply_retention(actor="locftd")
        assert sorted(p.name for p in result.deleted) == ["p0", "p1", "r0", "r1"]
        versions = {v.id: v for v in store.list_versions()}
        assert len(versions) == 1 + 4 + 3 + 1  # every row is still there
        assert [vid for vid, v in versions.items() if v.snapshot_path and not v.snapshot_present] == sorted(
            promoted[:2] + rejected[:2], reverse=True)
        assert versions[promoted[-1]].state == "promoted" and versions[promoted[-1]].snapshot_present
        assert versions[promoted[-2]].snapshot_present and versions[candidate].snapshot_present
        assert len(store.list_events(kind="snapshot.deleted")) == 4
        assert store.apply_retention().deleted == ()  # idempotent
        # rollback reaches the kept one; the deleted ones cannot be served
        assert store.rollback().version_id == promoted[-2]
