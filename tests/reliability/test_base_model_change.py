"""The base model's weights change under a store (a different fingerprint): every version built
on the old base is refused for serving, each time with a message that says why and what to do;
nothing is half-applied (no output directory, no round, no version); and putting the original
files back makes them servable again.

tests/test_serving.py checks the model server's refusal with a fake fingerprint; here the model
files themselves change on disk, and every way of serving or building on them is tried.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from locft.api import start_api_server
from locft.cli.main import cli
from locft.config import ModelConfig
from locft.engine.model_io import load_base
from locft.errors import SnapshotError, StoreError, error_code
from locft.facts import EditFact
from locft.home import Home
from locft.store import Store
from tests.reliability.conftest import http, table_counts
from tests.round_helpers import FACTS, make_home
from tests.serving_helpers import train_version


def run(home: Home, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"LOCFT_HOME": str(home.root), "LOCFT_AUTHOR": "tester"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_versions_built_on_another_base_are_refused_with_the_reason(tmp_path: Path, tiny_model_dir: Path,
                                                                    figures: dict[str, Any]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    home = make_home(tmp_path / "home", model_dir)
    original = load_base(ModelConfig(path=str(model_dir)), home.root)
    with Store.open(home) as store:
        for prompt, answer in FACTS:
            store.add_fact(EditFact(prompt, answer))
        v1 = train_version(home, store, original, "v1")

    # Someone replaces the model's weights (a re-download, a fine-tune in place): same shapes.
    weights = model_dir / "model.safetensors"
    saved = weights.read_bytes()
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    changed = load_base(ModelConfig(path=str(model_dir)), home.root)
    assert changed.fingerprint != original.fingerprint
    old, new = original.fingerprint[:12], changed.fingerprint[:12]
    before = table_counts(home.db_path)
    refusals = []

    # locft ask: refused, naming both fingerprints and the fix
    asked = run(home, "ask", "--local", FACTS[0][0])
    assert asked.exit_code == error_code(SnapshotError)[1]
    assert f"was built on base model {old}" in asked.stderr and new in asked.stderr
    assert "restore the original model files or rebuild with a new round" in asked.stderr
    refusals.append("locft ask")
    assert run(home, "ask", "--local", "--version", "0", FACTS[0][0]).exit_code == 0  # the new base itself is fine

    # the HTTP API: starts on version 0 and says why; version 1 by name is a 409 with the reason
    with start_api_server(home, port=0, loaded=changed, poll_s=0.2) as api:
        assert api.model_server.active.id == 0
        status, body = http(api, "POST", "/v1/completions", b'{"model": "locft-v1", "prompt": "x", "max_tokens": 2}')
        assert status == 409 and b"was built on base model" in body and b"cannot be served on this base" in body
        status, body = http(api, "GET", "/locft/status")
        assert status == 200 and b"was built on base model" in body  # served.swap_error
        status, body = http(api, "POST", "/locft/rollback", b'{"to": 0}')  # operators can still act
        assert status == 200
        status, body = http(api, "POST", "/locft/promote", b'{"version": 1}')
        assert status == 200 and b"cannot be served" in body  # moved, but swap_error says it is not served
        assert api.model_server.active.id == 0
    refusals.append("HTTP API")
    with Store.open(home) as store:  # (undo the operator calls above: the pointer is back on v1)
        assert store.promoted_version().id == v1
    before = table_counts(home.db_path)

    # export: refused before anything is written
    out = tmp_path / "export"
    exported = run(home, "export", str(v1), str(out))
    assert exported.exit_code == error_code(SnapshotError)[1]
    assert "was built on base model" in exported.stderr and not out.exists()
    refusals.append("locft export")

    # a round on the new base: refused by the store, which names both and says what to do
    ran = run(home, "round", "run", "--force")
    assert ran.exit_code == error_code(StoreError)[1] and "this store was built on base model" in ran.stderr
    assert "use another LOCFT_HOME for a different base model" in ran.stderr
    refusals.append("locft round run")
    with Store.open(home) as store:
        assert [v.id for v in store.list_versions()] == [v1, 0]  # no version recorded
        assert store.running_rounds() == [] and store.last_round().outcome == "failed"  # type: ignore[union-attr]
    after = table_counts(home.db_path)
    assert {k: after[k] for k in ("fact", "fact_revision", "version", "version_fact", "promoted_pointer")} == \
        {k: before[k] for k in ("fact", "fact_revision", "version", "version_fact", "promoted_pointer")}

    # the original weights back: version 1 is servable again
    weights.write_bytes(saved)
    assert run(home, "ask", "--local", FACTS[0][0]).stdout.strip().splitlines()[-1] == FACTS[0][1]
    figures.update({"ways of serving or building tried": refusals, "refused with the reason": len(refusals),
                    "facts or versions lost": 0})


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
