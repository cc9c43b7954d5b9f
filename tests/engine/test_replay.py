from __future__ import annotations

from pathlib import Path

import pytest

from locft.config import EditConfig
from locft.engine.model_io import LoadedModel
from locft.engine.replay import ReplayItem, build_replay, default_replay_prompts
from locft.engine.train import edit
from locft.engine.weights import applied
from locft.evaluation.editing import token_agreement
from locft.errors import ConfigError
from locft.facts import EditFact

FACTS = [
    EditFact("The capital of Wakanda is", "Birnin Zana"),
    EditFact("Zorblax was invented by", "Ada Lovelace"),
    EditFact("Frodo's sword is called", "Sting"),
]


def test_default_prompts_are_generic_deterministic_and_exclude(tmp_path: Path) -> None:
    a = default_replay_prompts(10)
    assert a == default_replay_prompts(10) and len(set(a)) == 10
    excluded = default_replay_prompts(12, exclude=["nq question: " + a[0].rstrip("?"), a[1]])
    assert a[0] not in excluded and a[1] not in excluded and a[2] in excluded


def test_mixed_pool_shows_every_prompt_style_and_excludes() -> None:
    mixed = default_replay_prompts(28, pool="mixed")
    assert mixed == default_replay_prompts(28, pool="mixed") and len(set(mixed)) == 28
    assert any(p.endswith("?") and p[0].isupper() for p in mixed)  # questions
    assert any(p == p.lower() and not p.endswith("?") for p in mixed)  # search queries
    assert any(p.startswith(("Define the word", "Use the word")) for p in mixed)  # instructions
    assert any(not p.endswith(("?", ".")) and p[0].isupper() for p in mixed)  # sentence openings
    dropped = default_replay_prompts(28, exclude=[mixed[1].upper(), mixed[2]], pool="mixed")
    assert mixed[1] not in dropped and mixed[2] not in dropped and mixed[3] in dropped


def test_unknown_pool_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="replay pool"):
        default_replay_prompts(3, pool="everything")
    with pytest.raises(ConfigError, match="replay_pool"):
        EditConfig(replay_pool="everything")


def test_replay_is_cached_per_base_model(tiny: LoadedModel, tmp_path: Path) -> None:
    prompts = default_replay_prompts(4)
    first = build_replay(tiny, prompts, "raw", 6, cache_dir=tmp_path)
    assert [r.prompt for r in first] == prompts and all(r.token_ids for r in first)
    assert list((tmp_path / "replay").iterdir())
    assert build_replay(tiny, prompts, "raw", 6, cache_dir=tmp_path) == first


def test_replay_keeps_base_continuations(tiny: LoadedModel) -> None:
    replay = build_replay(tiny, default_replay_prompts(12), "raw", 8)
    base = [type("G", (), {"token_ids": r.token_ids})() for r in replay]
    prompts = [r.prompt for r in replay]

    def agreement(ratio: float) -> float:
        cfg = EditConfig(lr=1e-2, batch_size=3, max_epochs=20, prompt_format="raw", replay_ratio=ratio)
        result = edit(tiny, FACTS, cfg, replay=replay)
        assert (result.n_replay > 0) == (ratio > 0)
        with applied(tiny.model, result.tensors):
            scores = token_agreement(tiny, prompts, base, "raw")
        return sum(scores) / len(scores)

    without, with_replay = agreement(0.0), agreement(1.0)
    assert with_replay > without + 0.1, (without, with_replay)


def test_replay_ignored_when_ratio_is_zero(tiny: LoadedModel) -> None:
    replay = [ReplayItem("Some question?", (42, 43))]
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, max_epochs=1), replay=replay)
    assert result.n_replay == 0 and result.summary()["replay_loss_per_epoch"] is None


@pytest.mark.parametrize("bad", [{"replay_ratio": -1.0}, {"replay_pool_size": 0}])
def test_replay_config_validated(bad: dict) -> None:
    from locft.errors import ConfigError

    with pytest.raises(ConfigError):
        EditConfig(**bad)
