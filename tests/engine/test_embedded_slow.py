"""The real embedded model on a few real ZsRE facts (slow: ~1-2 minutes on 2 CPU cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from locft.config import EditConfig, ModelConfig
from locft.engine.model_io import load_base
from locft.engine.train import edit
from locft.engine.weights import applied
from locft.evaluation.editing import evaluate_edits
from locft.readers import load_edit_facts

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "zsre_dev.json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Reuse a home across runs when given (the GGUF conversion takes ~20 s).
    env = os.environ.get("LOCFT_TEST_HOME")
    return Path(env) if env else tmp_path_factory.mktemp("embedded-home")


def test_embedded_model_learns_real_facts(embedded_home: Path) -> None:
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    loaded = load_base(ModelConfig(), embedded_home)
    assert loaded.config.model_type == "llama" and loaded.config.num_hidden_layers == 30
    facts = load_edit_facts(DATA, limit=6)
    before = evaluate_edits(loaded, facts, "chat", max_new_tokens=16)
    result = edit(loaded, facts, EditConfig(batch_size=6))
    assert result.location.describe() == "model.layers.21,22.mlp.down_proj.weight" and result.lr == 5e-3
    with applied(loaded.model, result.tensors):
        after = evaluate_edits(loaded, facts, "chat", max_new_tokens=16)
    assert before.reliability <= 0.2
    assert after.reliability >= 5 / 6, after.samples
    # the conversion is cached: a second load takes the safetensors path and the same fingerprint
    assert load_base(ModelConfig(), embedded_home).fingerprint == loaded.fingerprint
