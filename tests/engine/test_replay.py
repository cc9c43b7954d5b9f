from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from locft.config import EditConfig
from locft.engine.data import collate, encode_prompt, example_from_ids
from locft.engine.model_io import LoadedModel
from locft.engine.replay import (
    MAX_DEFAULT_POOL,
    MIN_DEFAULT_POOL,
    ReplayItem,
    build_replay,
    default_replay_prompts,
    reference_qa_items,
    replay_for,
    replay_pool_size,
)
from locft.engine.train import edit
from locft.engine.weights import applied
from locft.errors import ConfigError
from locft.evaluation.editing import token_agreement
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


def test_replay_cache_generates_only_new_prompts(tiny: LoadedModel, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import locft.engine.generate as generate

    asked: list[str] = []
    real = generate.greedy_generate

    def counting(loaded: LoadedModel, prompts: list[str], *args: object, **kwargs: object) -> object:
        asked.extend(prompts)
        return real(loaded, prompts, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generate, "greedy_generate", counting)
    prompts = default_replay_prompts(6)
    first = build_replay(tiny, prompts[:4], "raw", 6, cache_dir=tmp_path)
    second = build_replay(tiny, prompts[2:], "raw", 6, cache_dir=tmp_path)  # a round with other facts
    assert asked == prompts[:4] + prompts[4:]
    assert second[:2] == first[2:] and [r.prompt for r in second] == prompts[2:]
    assert len(list((tmp_path / "replay").iterdir())) == 1


@pytest.mark.parametrize("n_facts, expected", [(1, MIN_DEFAULT_POOL), (MIN_DEFAULT_POOL + 1, MIN_DEFAULT_POOL + 1),
                                               (1000, 1000), (10_000, MAX_DEFAULT_POOL)])
def test_default_pool_grows_with_the_facts_within_bounds(n_facts: int, expected: int) -> None:
    assert replay_pool_size(EditConfig(), n_facts) == expected
    assert replay_pool_size(EditConfig(replay_pool_size=7), n_facts) == 7  # set: used as it is
    # question-answer pairs come on top of the prompts: a third of the pool leaves them as they were
    assert replay_pool_size(EditConfig(replay_qa_share=1 / 3), n_facts) in (expected * 3 // 2, (expected * 3 + 1) // 2)
    assert replay_pool_size(EditConfig(replay_qa_share=1.0), n_facts) == expected


def test_qa_share_resolves_per_model_and_never_with_token_targets(tiny: LoadedModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from locft.engine import targets
    from locft.engine.resolve import resolve_edit_config

    # the tiny model is no measured architecture: off, like replay itself
    assert resolve_edit_config(tiny, EditConfig(), 10).replay_qa_share == 0.0
    assert resolve_edit_config(tiny, EditConfig(replay_qa_share=0.25), 10).replay_qa_share == 0.25
    monkeypatch.setitem(targets.PRESETS, targets._arch_key(tiny.config), targets.Preset(None, replay_qa_share=0.5))
    assert resolve_edit_config(tiny, EditConfig(), 10).replay_qa_share == 0.5
    # token targets would teach the reference answers: the default turns the pairs off
    assert resolve_edit_config(tiny, EditConfig(replay_target="tokens"), 10).replay_qa_share == 0.0


def test_a_larger_pool_extends_a_smaller_one(tiny: LoadedModel, tmp_path: Path) -> None:
    # a round over more facts asks for more prompts: the earlier ones stay (and stay cached)
    small = replay_for(tiny, EditConfig(replay_ratio=1.0, replay_pool_size=5), "raw", 3, cache_dir=tmp_path)
    large = replay_for(tiny, EditConfig(replay_ratio=1.0, replay_pool_size=9), "raw", 3, cache_dir=tmp_path)
    assert [r.prompt for r in large][: len(small)] == [r.prompt for r in small]
    assert len(large) > len(small)


def test_replay_keeps_base_continuations(tiny: LoadedModel) -> None:
    replay = build_replay(tiny, default_replay_prompts(12), "raw", 8)
    base = [type("G", (), {"token_ids": r.token_ids})() for r in replay]
    prompts = [r.prompt for r in replay]

    def agreement(ratio: float) -> float:
        cfg = EditConfig(lr=1e-2, batch_size=3, max_epochs=20, prompt_format="raw", replay_ratio=ratio,
                         replay_target="tokens")
        result = edit(tiny, FACTS, cfg, replay=replay)
        assert (result.n_replay > 0) == (ratio > 0)
        with applied(tiny.model, result.tensors):
            scores = token_agreement(tiny, prompts, base, "raw")
        return sum(scores) / len(scores)

    without, with_replay = agreement(0.0), agreement(1.0)
    assert with_replay > without + 0.1, (without, with_replay)


def _replay_log_probs(loaded: LoadedModel, replay: list[ReplayItem]) -> torch.Tensor:
    """Next-token log-probabilities at every replay target position (teacher-forced)."""
    tok = loaded.tokenizer
    batch = collate([example_from_ids(encode_prompt(tok, r.prompt, "raw"), r.token_ids) for r in replay],
                    tok.pad_token_id, loaded.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[batch.rows, batch.cols].float().log_softmax(-1)


def test_distribution_replay_starts_at_zero_kl_and_keeps_the_base_distribution(tiny: LoadedModel) -> None:
    replay = build_replay(tiny, default_replay_prompts(12), "raw", 8)
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    base = _replay_log_probs(tiny, replay)

    def run(**overrides: object) -> tuple[float, float]:
        settings: dict = {"lr": 5e-2, "batch_size": 3, "max_epochs": 20, "prompt_format": "raw",
                          "replay_ratio": 1.0, "replay_weight": 10.0, "augment_prefixes": 0} | overrides
        result = edit(tiny, FACTS, EditConfig(**settings), replay=replay)
        with applied(tiny.model, result.tensors):
            now = _replay_log_probs(tiny, replay)
        kl = float((base.exp() * (base - now)).sum(-1).mean())  # KL(base || edited) per position
        return result.epochs[0].replay_loss or 0.0, kl

    kl_first, kl_kept = run(replay_target="distribution", replay_top_k=vocab)
    ce_first, kl_tokens = run()
    _, kl_without = run(replay_ratio=0.0)
    # KL is 0 before the first step, so its first-epoch mean is small next to cross-entropy on the
    # base's greedy tokens (which pulls the model towards them); the edited model stays closest to
    # the base distribution when that distribution is the target
    assert kl_first < 0.5 * ce_first, (kl_first, ce_first)
    assert kl_kept < 0.5 * kl_without and kl_kept < kl_tokens, (kl_kept, kl_tokens, kl_without)


def test_replay_ignored_when_ratio_is_zero(tiny: LoadedModel) -> None:
    replay = [ReplayItem("Some question?", (42, 43))]
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, max_epochs=1), replay=replay)
    assert result.n_replay == 0 and result.summary()["replay_loss_per_epoch"] is None


@pytest.mark.parametrize("bad", [{"replay_ratio": -1.0}, {"replay_pool_size": 0}, {"replay_target": "logits"},
                                 {"replay_top_k": 0}])
def test_replay_config_validated(bad: dict) -> None:
    from locft.errors import ConfigError

    with pytest.raises(ConfigError):
        EditConfig(**bad)


def test_raw_share_asks_part_of_the_pool_as_plain_text(tiny: LoadedModel, tmp_path: Path) -> None:
    # lm-eval asks plain text: with replay_raw_share 0.5 every other prompt of the same pool is
    # asked without the chat template, its target the base model's plain-text continuation
    cfg = EditConfig(replay_ratio=1.0, replay_pool_size=6, replay_raw_share=0.5)
    prompts = default_replay_prompts(6, pool=cfg.replay_pool)
    items = replay_for(tiny, cfg, "chat", 3, cache_dir=tmp_path)
    by_format = {fmt: [r.prompt for r in items if r.prompt_format == fmt] for fmt in ("chat", "raw")}
    assert by_format["raw"] and set(by_format["raw"]) <= set(prompts[1::2])
    assert by_format["chat"] and set(by_format["chat"]) <= set(prompts[0::2])
    plain = {r.prompt: r.token_ids for r in build_replay(tiny, prompts[1::2], "raw", cfg.replay_max_tokens)}
    assert {r.prompt: r.token_ids for r in items if r.prompt_format == "raw"} == {p: plain[p] for p in by_format["raw"]}
    assert len(list((tmp_path / "replay").iterdir())) == 2  # one cache per format
    # edits trained as plain text already replay plain text: the share changes nothing
    assert {r.prompt_format for r in replay_for(tiny, cfg, "raw", 3, cache_dir=tmp_path)} == {"raw"}
    with pytest.raises(ConfigError, match="replay_raw_share"):
        EditConfig(replay_raw_share=1.5)


def test_reference_qa_items_are_plain_text_answers_and_exclude(tiny: LoadedModel) -> None:
    items = reference_qa_items(tiny.tokenizer, 8, max_tokens=3)
    assert items == reference_qa_items(tiny.tokenizer, 8, max_tokens=3) and len({r.prompt for r in items}) == 8
    for r in items:  # lm-eval's answer-choice format, asked as plain text
        assert r.prompt.startswith("Question: ") and r.prompt.endswith("?\nAnswer:") and r.prompt_format == "raw"
        assert 1 <= len(r.token_ids) <= 3
    # the continuation is the answer as a new word (a leading space), as lm-eval appends a choice
    question = items[1].prompt.removeprefix("Question: ").removesuffix("\nAnswer:")
    assert tiny.tokenizer.decode(items[1].token_ids).startswith(" ")
    dropped = reference_qa_items(tiny.tokenizer, 8, exclude=["nq question: " + question.rstrip("?").upper()],
                                 max_tokens=3)
    assert items[1] not in dropped and items[0] in dropped and items[2] in dropped
    # the prompt pools open with other questions of the same sets
    assert not {r.prompt.removeprefix("Question: ").removesuffix("\nAnswer:") for r in items} & set(
        default_replay_prompts(40, pool="mixed"))


def test_qa_share_takes_part_of_the_pool_and_trains_towards_the_base_distribution(tiny: LoadedModel,
                                                                                  tmp_path: Path) -> None:
    vocab = tiny.model.config.vocab_size
    cfg = EditConfig(replay_ratio=1.0, replay_pool_size=6, replay_qa_share=0.5, lr=1e-2, max_epochs=2,
                     replay_top_k=vocab)
    items = replay_for(tiny, cfg, "chat", 3, cache_dir=tmp_path)
    qa = [r for r in items if r.prompt.startswith("Question: ")]
    assert qa == reference_qa_items(tiny.tokenizer, 3, max_tokens=cfg.replay_max_tokens)
    assert {r.prompt for r in items if r not in qa} <= set(default_replay_prompts(3, pool=cfg.replay_pool))
    result = edit(tiny, FACTS, cfg, replay=items)
    assert result.n_replay == len(items)
    # KL to the base's whole distribution starts at 0; cross-entropy on the reference answers (never
    # the target) would be about log(vocab) on this random model
    assert result.epochs[0].replay_loss is not None and result.epochs[0].replay_loss < 0.1 * math.log(vocab)
    with pytest.raises(ConfigError, match="replay_qa_share"):
        EditConfig(replay_qa_share=1.5)
    with pytest.raises(ConfigError, match="distribution"):
        EditConfig(replay_qa_share=0.5, replay_target="tokens")
