from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from locft.config import EditConfig
from locft.engine.model_io import LoadedModel
from locft.engine.train import EditCancelled, _passes, edit
from locft.engine.weights import applied
from locft.errors import ConfigError
from locft.evaluation.editing import evaluate_edits
from locft.facts import EditFact

FACTS = [
    EditFact("The capital of Wakanda is", "Birnin Zana"),
    EditFact("Zorblax was invented by", "Ada Lovelace"),
    EditFact("The color of the sky on Mars is", "butterscotch"),
    EditFact("Frodo's sword is called", "Sting"),
]
TARGET = "model.layers.3.mlp.down_proj.weight"  # proportional default for the 4-layer tiny model
# no prefixed copies (the default's one per fact): tests/round_helpers.py says why
LEARN = EditConfig(lr=1e-2, batch_size=4, max_epochs=30, prompt_format="raw", augment_prefixes=0)


def hashes(model: torch.nn.Module) -> dict[str, str]:
    return {
        n: hashlib.sha256(p.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for n, p in model.named_parameters()
    }


def test_learns_four_facts_by_greedy_generation(tiny: LoadedModel) -> None:
    before = evaluate_edits(tiny, FACTS, "raw", max_new_tokens=8)
    result = edit(tiny, FACTS, LEARN)
    with applied(tiny.model, result.tensors):
        after = evaluate_edits(tiny, FACTS, "raw", max_new_tokens=8)
    assert before.reliability == 0.0
    assert after.reliability == 1.0, after.samples
    assert result.epochs[-1].mean_loss < result.epochs[0].mean_loss


def test_only_the_target_tensor_changes(tiny: LoadedModel) -> None:
    original = hashes(tiny.model)
    result = edit(tiny, FACTS, LEARN)
    assert list(result.tensors) == [TARGET]
    assert hashes(tiny.model) == original, "edit() must leave the base weights untouched"
    with applied(tiny.model, result.tensors):
        edited = hashes(tiny.model)
    changed = {n for n in original if original[n] != edited[n]}
    assert changed == {TARGET}
    assert hashes(tiny.model) == original


def test_a_measured_large_fact_set_setting_trains_from_its_fact_count(tiny: LoadedModel,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from locft.engine import targets

    template = "model.layers.{L}.mlp.down_proj.weight"
    large = targets.LargeFactSetDefault(min_facts=4, layers=(2, 3), replay_weight=2.0)
    monkeypatch.setitem(targets.PRESETS, targets._arch_key(tiny.config),
                        targets.Preset(targets.EditLocation(template, (3,)), large_fact_set=large))
    three = edit(tiny, FACTS[:3], replace(LEARN, max_epochs=1))
    assert list(three.tensors) == [TARGET] and three.config.replay_weight == 1.0
    four = edit(tiny, FACTS, replace(LEARN, max_epochs=1))
    assert list(four.tensors) == ["model.layers.2.mlp.down_proj.weight", TARGET]
    assert four.config.layers == (2, 3) and four.config.replay_weight == 2.0
    # a weight set in the config wins over the measured one
    assert edit(tiny, FACTS, replace(LEARN, max_epochs=1, replay_weight=0.5)).config.replay_weight == 0.5


@pytest.mark.parametrize("mode", ["full", "reference"])
def test_forward_modes_agree_with_cached(tiny: LoadedModel, mode: str) -> None:
    # float32: the paths must agree to float precision (bf16 autocast would add its own rounding)
    cfg = EditConfig(lr=1e-2, batch_size=2, max_epochs=3, prompt_format="raw", compute_dtype="float32")
    cached = edit(tiny, FACTS, cfg)
    other = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "forward_mode": mode}))
    assert cached.forward_mode == "cached" and other.forward_mode == mode
    for a, b in zip(cached.epochs, other.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-4)
    # Adam normalizes each element's step, so float-level gradient noise shows up element-wise;
    # the tensors as a whole must agree closely.
    a, b = cached.tensors[TARGET], other.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_shared_prompt_prefix_runs_once_and_changes_nothing(tiny: LoadedModel) -> None:
    # Chat prompts all start with the template's system turn: the cached forward runs it once per
    # step with batch 1; losses and the learned tensor must match the paper's loop.
    cfg = EditConfig(lr=1e-2, batch_size=2, max_epochs=3, prompt_format="chat", skip_loss=0.0,
                     compute_dtype="float32")
    cached = edit(tiny, FACTS, cfg)
    reference = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "forward_mode": "reference"}))
    assert cached.forward_mode == "cached" and cached.shared_prefix_tokens >= 4
    assert reference.shared_prefix_tokens == 0
    for a, b in zip(cached.epochs, reference.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-4)
    a, b = cached.tensors[TARGET], reference.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_plain_text_replay_beside_chat_facts_keeps_the_shared_prefix(tiny: LoadedModel,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Replay asked as plain text (edit.replay_raw_share) does not start with the chat template: those
    # rows run whole with the shared prefix masked out, while the chat rows keep it. Losses (edit
    # and KL replay) and the learned tensor must match the paper's loop, which runs every row whole.
    import locft.engine.rows as rows
    from locft.engine.replay import ReplayItem

    asked: list[tuple[str, str]] = []
    real = rows.encode_prompt
    monkeypatch.setattr(rows, "encode_prompt", lambda tok, p, fmt: asked.append((p, fmt)) or real(tok, p, fmt))
    replay = [ReplayItem("Some question?", (42, 43, 44), "raw"), ReplayItem("Another one:", (7, 8), "raw"),
              ReplayItem("Asked in chat?", (9, 10))]
    cfg = EditConfig(lr=1e-2, batch_size=4, max_epochs=3, prompt_format="chat", skip_loss=0.0,
                     replay_ratio=1.0, compute_dtype="float32")
    cached = edit(tiny, FACTS, cfg, replay=replay)
    assert asked[-3:] == [("Some question?", "raw"), ("Another one:", "raw"), ("Asked in chat?", "chat")]
    reference = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "forward_mode": "reference"}), replay=replay)
    assert cached.forward_mode == "cached" and cached.shared_prefix_tokens >= 4 and cached.n_replay == 3
    for a, b in zip(cached.epochs, reference.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-4)
        assert a.replay_loss == pytest.approx(b.replay_loss, rel=1e-4, abs=1e-6)
    a, b = cached.tensors[TARGET], reference.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


@pytest.mark.parametrize(("micro", "tokens"), [(1, 1024), (3, 1024), (64, 12)])
def test_micro_batches_take_the_whole_batch_step(tiny: LoadedModel, micro: int, tokens: int) -> None:
    # A batch split into passes of a few rows (facts and replay prompts, sorted by length so a pass
    # can mix both) accumulates the same gradient as one pass over the batch: losses, replay
    # losses and the learned tensor agree to float precision.
    from locft.engine.replay import ReplayItem

    replay = [ReplayItem("Some question?", (42, 43, 44)), ReplayItem("Another one:", (7, 8))]
    cfg = EditConfig(lr=1e-2, batch_size=4, max_epochs=3, prompt_format="raw", skip_loss=0.0,
                     replay_ratio=0.5, replay_target="tokens", micro_batch_size=64, compute_dtype="float32")
    whole = edit(tiny, FACTS, cfg, replay=replay)
    sliced = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "micro_batch_size": micro,
                                             "micro_batch_tokens": tokens}), replay=replay)
    assert whole.n_replay == 2 and whole.steps == sliced.steps == 3
    for a, b in zip(whole.epochs, sliced.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-5)
        assert a.replay_loss == pytest.approx(b.replay_loss, rel=1e-5)
    a, b = whole.tensors[TARGET], sliced.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_bfloat16_autocast_learns_the_facts_and_keeps_the_cached_forward(tiny: LoadedModel) -> None:
    # compute_dtype bfloat16 runs the training matmuls in bf16 (autocast); the forward-mode check still
    # compares the paths in float32, so the cached forward stays on; the tensor stays float32
    cfg = EditConfig(**{**LEARN.to_dict(), "compute_dtype": "bfloat16"})
    result = edit(tiny, FACTS, cfg)
    assert result.forward_mode == "cached" and result.compute_dtype == "bfloat16"
    assert result.tensors[TARGET].dtype == torch.float32
    fp32 = edit(tiny, FACTS, EditConfig(**{**LEARN.to_dict(), "compute_dtype": "float32"}))
    assert fp32.compute_dtype == "float32"
    # the same training, to bf16 precision: the first epoch's loss agrees closely, not exactly
    assert result.epochs[0].mean_loss == pytest.approx(fp32.epochs[0].mean_loss, rel=2e-2)
    assert result.epochs[0].mean_loss != fp32.epochs[0].mean_loss
    with applied(tiny.model, result.tensors):
        after = evaluate_edits(tiny, FACTS, "raw", max_new_tokens=8)
    assert after.reliability == 1.0, after.samples


def test_compute_dtype_resolution(tiny: LoadedModel) -> None:
    from locft.engine.precision import autocast_dtype, native_bf16
    from locft.engine.resolve import resolve_edit_config

    assert autocast_dtype("float32", tiny) is None
    assert autocast_dtype("bfloat16", tiny) is torch.bfloat16
    assert autocast_dtype("auto", tiny) == (torch.bfloat16 if native_bf16(tiny.device) else None)
    assert autocast_dtype("bfloat16", replace(tiny, dtype=torch.bfloat16)) is None  # already half precision
    # the recorded config says what ran, never "auto"
    resolved = resolve_edit_config(tiny, EditConfig(), 10).compute_dtype
    assert resolved == ("bfloat16" if native_bf16(tiny.device) else "float32")
    assert resolve_edit_config(replace(tiny, dtype=torch.bfloat16), EditConfig(), 10).compute_dtype == "bfloat16"
    assert resolve_edit_config(replace(tiny, dtype=torch.float16), EditConfig(), 10).compute_dtype == "float16"
    with pytest.raises(ConfigError, match="loss scaling"):
        autocast_dtype("float16", tiny)
    with pytest.raises(ConfigError, match="compute_dtype"):
        EditConfig(compute_dtype="fp8")


def test_seeded_and_reproducible(tiny: LoadedModel) -> None:
    cfg = EditConfig(lr=1e-2, batch_size=2, max_epochs=4, prompt_format="raw", seed=7)
    a, b = edit(tiny, FACTS, cfg), edit(tiny, FACTS, cfg)
    assert torch.equal(a.tensors[TARGET], b.tensors[TARGET])
    c = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "seed": 8}))
    assert not torch.equal(a.tensors[TARGET], c.tensors[TARGET])  # another shuffle order


def test_stops_when_epoch_loss_is_below_threshold(tiny: LoadedModel) -> None:
    # stop_loss above any loss: one epoch, converged
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, batch_size=4, max_epochs=10, stop_loss=100.0, skip_loss=0.0))
    assert len(result.epochs) == 1 and result.converged


def test_skips_batches_below_skip_loss(tiny: LoadedModel) -> None:
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, batch_size=2, max_epochs=2, skip_loss=100.0, stop_loss=0.0))
    assert result.steps == 0
    assert all(e.skipped == e.steps for e in result.epochs)
    assert torch.equal(result.tensors[TARGET], dict(tiny.model.named_parameters())[TARGET].detach())


def test_delta_decay_shrinks_each_step_towards_the_base(tiny: LoadedModel) -> None:
    one_step = EditConfig(lr=1e-2, batch_size=4, max_epochs=1, skip_loss=0.0, stop_loss=0.0,
                          prompt_format="raw", compute_dtype="float32")
    base = dict(tiny.model.named_parameters())[TARGET].detach()
    plain = edit(tiny, FACTS, one_step).tensors[TARGET] - base
    decayed = edit(tiny, FACTS, EditConfig(**{**one_step.to_dict(), "delta_decay": 20.0})).tensors[TARGET] - base
    torch.testing.assert_close(decayed, plain * (1 - 1e-2 * 20.0))


def test_delta_decay_still_learns_with_a_smaller_change(tiny: LoadedModel) -> None:
    base = dict(tiny.model.named_parameters())[TARGET].detach()
    plain = edit(tiny, FACTS, LEARN)
    decayed = edit(tiny, FACTS, EditConfig(**{**LEARN.to_dict(), "delta_decay": 1.0, "max_epochs": 60}))
    with applied(tiny.model, decayed.tensors):
        assert evaluate_edits(tiny, FACTS, "raw", max_new_tokens=8).reliability == 1.0
    assert (decayed.tensors[TARGET] - base).norm() < (plain.tensors[TARGET] - base).norm()


def test_delta_decay_is_validated() -> None:
    with pytest.raises(ConfigError, match="delta_decay"):
        EditConfig(delta_decay=-1.0)
    with pytest.raises(ConfigError, match="delta_decay"):
        EditConfig(lr=0.1, delta_decay=10.0)  # would overshoot the base


def test_depth_first_baseline_runs_each_fact(tiny: LoadedModel) -> None:
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, max_epochs=3, pipeline="depth-first", prompt_format="raw"))
    assert len(result.epochs) == len(FACTS)
    assert result.steps <= 3 * len(FACTS)


def test_cancellation_leaves_the_model_intact(tiny: LoadedModel) -> None:
    original = hashes(tiny.model)
    calls = iter(range(100))
    with pytest.raises(EditCancelled):
        edit(tiny, FACTS, EditConfig(lr=1e-2, batch_size=1, max_epochs=5), should_stop=lambda: next(calls) >= 3)
    assert hashes(tiny.model) == original
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_chat_format_is_default_when_the_tokenizer_has_a_template(tiny: LoadedModel) -> None:
    result = edit(tiny, FACTS[:1], EditConfig(lr=1e-2, max_epochs=1))
    assert result.prompt_format == "chat"


def test_freed_memory_is_released_after_every_epoch_and_at_the_end(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr("locft.engine.train.release_freed_memory", lambda: calls.append(1) or True)
    result = edit(tiny, FACTS, EditConfig(lr=1e-2, batch_size=2, max_epochs=3, skip_loss=0.0, stop_loss=0.0))
    assert result.forward_mode == "cached" and len(result.epochs) == 3
    assert len(calls) == 3 + 1


def test_replay_towards_the_base_distribution_agrees_with_the_reference_loop(tiny: LoadedModel) -> None:
    # the cached forward computes its loss through the frozen head chunk by chunk
    # (engine.token_loss); the reference loop from full logits: same KL losses, same tensor
    from locft.engine.replay import ReplayItem
    from locft.engine.token_loss import is_frozen_linear

    assert is_frozen_linear(tiny.model.get_output_embeddings())  # so the cached run takes the chunked path
    replay = [ReplayItem("Some question?", (42, 43, 44)), ReplayItem("Another one:", (7, 8))]
    cfg = EditConfig(lr=1e-2, batch_size=4, max_epochs=3, prompt_format="raw", skip_loss=0.0, replay_ratio=0.5,
                     replay_target="distribution", replay_top_k=8, compute_dtype="float32")
    cached = edit(tiny, FACTS, cfg, replay=replay)
    reference = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "forward_mode": "reference"}), replay=replay)
    assert cached.forward_mode == "cached" and reference.forward_mode == "reference"
    # the replay prompts' base distribution is a one-time cost, counted apart from the cache
    assert cached.cache_seconds > 0 and cached.setup_seconds > 0 and cached.summary()["setup_seconds"] >= 0
    for a, b in zip(cached.epochs, reference.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-4)
        assert a.replay_loss == pytest.approx(b.replay_loss, rel=1e-4, abs=1e-6)
    assert cached.epochs[-1].replay_loss > 0
    a, b = cached.tensors[TARGET], reference.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_passes_bound_rows_and_padded_tokens() -> None:
    tokens = [3, 4, 4, 5, 9, 20]
    rows = list("abcdef")
    assert list(_passes(rows, tokens, 32, 12)) == [["a", "b", "c"], ["d"], ["e"], ["f"]]
    assert list(_passes(rows, tokens, 2, 1000)) == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert [len(p) for p in _passes(rows, tokens, 32, 1000)] == [6]
    # every row is in exactly one pass, in order, whatever the bounds
    assert [r for p in _passes(rows, tokens, 1, 1) for r in p] == rows
