"""A home with something to serve: the tiny model, 4 facts, version 1 trained, gated, promoted.

Built with the engine and the store directly (a few seconds), not with a full round (~20 s of
gates): serving only needs a recorded, verified snapshot and a pointer on it.
"""

from __future__ import annotations

from pathlib import Path

from locft.config import load_config, to_dict
from locft.engine.model_io import LoadedModel
from locft.facts import EditFact
from locft.home import Home
from locft.store import Store
from tests.round_helpers import FACTS, make_home


def train_version(home: Home, store: Store, loaded: LoadedModel, name: str = "serve-v1") -> int:
    """Train on every active fact, snapshot, record, gate (passed) and promote; returns its id."""
    from locft.engine.snapshot import save_snapshot
    from locft.engine.train import edit

    config = load_config(home.root)
    entries = store.active_facts()
    result = edit(loaded, [e.fact for e in entries], config.edit)
    edit_record = to_dict(config.edit) | {"prompt_format": result.prompt_format, "lr": result.lr,
                                          "parameters": list(result.tensors)}
    snap = save_snapshot(home.snapshots_dir, name, result.tensors, loaded.fingerprint,
                         extra={"edit_config": edit_record})
    version = store.record_version(revision_ids=[e.revision_id for e in entries], snapshot_dir=snap.path,
                                   base_fingerprint=loaded.fingerprint, edit_config=edit_record)
    store.record_gate_result(version.id, passed=True, metrics={"reliability": 1.0})
    store.promote(version.id, actor="test")
    return version.id


def make_served_home(root: Path, model_dir: Path, loaded: LoadedModel) -> Home:
    home = make_home(root, model_dir)
    with Store.open(home) as store:
        for prompt, answer in FACTS:
            store.add_fact(EditFact(prompt, answer))
        assert train_version(home, store, loaded) == 1
    return home
