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


def train_version(home: Home, store: Store, loaded: LoadedModel, name: str = "serve-v1", scoped: bool = False) -> int:
    """Train on every active fact, snapshot, record, gate (passed) and promote; returns its id.
    `scoped`: the snapshot carries the facts' subject scope (engine.scope), as a round's does."""
    from locft.engine.scope import build_scope
    from locft.engine.snapshot import save_snapshot
    from locft.engine.train import edit

    config = load_config(home.root)
    entries = store.active_facts()
    result = edit(loaded, [e.fact for e in entries], config.edit)
    edit_record = to_dict(config.edit) | {"prompt_format": result.prompt_format, "lr": result.lr,
                                          "parameters": list(result.tensors)}
    scope = build_scope(loaded, [e.fact for e in entries], result.prompt_format) if scoped else None
    snap = save_snapshot(home.snapshots_dir, name, result.tensors, loaded.fingerprint,
                         extra={"edit_config": edit_record}, scope=scope)
    version = store.record_version(revision_ids=[e.revision_id for e in entries], snapshot_dir=snap.path,
                                   base_fingerprint=loaded.fingerprint, edit_config=edit_record)
    store.record_gate_result(version.id, passed=True, metrics={"reliability": 1.0})
    store.promote(version.id, actor="test")
    return version.id


def make_served_home(root: Path, model_dir: Path, loaded: LoadedModel, scoped: bool = False) -> Home:
    home = make_home(root, model_dir)
    with Store.open(home) as store:
        for prompt, answer in FACTS:
            store.add_fact(EditFact(prompt, answer))
        assert train_version(home, store, loaded, scoped=scoped) == 1
    return home
