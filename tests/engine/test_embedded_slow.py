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


def test_a_scoped_version_on_real_facts_keeps_unrelated_answers_exactly(embedded_home: Path) -> None:
    """Real ZsRE facts (subjects given) and the demo's kind of fact (none given): the edit answers
    its facts and their paraphrases; unrelated questions, the facts' own locality probes among
    them, get the base model's answers token for token."""
    if not DATA.exists():
        pytest.skip(f"{DATA} not available")
    import dataclasses

    from locft.engine.generate import greedy_generate
    from locft.engine.scope import build_scope, scope_coverage
    from locft.engine.scoped import answering
    from locft.facts import EditFact

    loaded = load_base(ModelConfig(), embedded_home)
    facts = load_edit_facts(DATA, limit=6) + [EditFact("What is the capital of Australia?", "Sydney")]
    result = edit(loaded, facts, EditConfig(batch_size=7, replay_ratio=0))
    scope = build_scope(loaded, [dataclasses.replace(f, paraphrases=(), probes=()) for f in facts], "chat")
    unrelated = ["Who painted the Mona Lisa?", "What is the boiling point of water in Celsius?"] + [
        p.prompt for f in facts for p in f.probes]
    paraphrases = [p for f in facts for p in f.paraphrases]
    assert not any(scope_coverage(loaded, scope, unrelated, "chat"))
    assert all(scope_coverage(loaded, scope, [f.prompt for f in facts], "chat"))
    assert sum(scope_coverage(loaded, scope, paraphrases, "chat")) >= len(paraphrases) - 1
    base = greedy_generate(loaded, unrelated, "chat", 24)
    with answering(loaded, result.tensors, scope):
        after = evaluate_edits(loaded, facts, "chat", max_new_tokens=16)
        now = greedy_generate(loaded, unrelated, "chat", 24)
    assert after.reliability >= 6 / 7, after.samples
    assert [g.token_ids for g in now] == [g.token_ids for g in base]
    with applied(loaded.model, result.tensors):  # the same tensors on every prompt do move them
        unscoped = greedy_generate(loaded, unrelated, "chat", 24)
    assert [g.token_ids for g in unscoped] != [g.token_ids for g in base]
