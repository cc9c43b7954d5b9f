"""The cached forward's activation cache: one buffer, the shared prompt prefix run once."""

from __future__ import annotations

import pytest
import torch

from locft.engine.data import build_example
from locft.engine.forward import Forward
from locft.engine.model_io import LoadedModel
from locft.engine.result import TrainProgress
from tests.engine.test_train import FACTS, TARGET


def _chat_forward(tiny: LoadedModel) -> Forward:
    examples = [build_example(tiny.tokenizer, f.prompt, f.answer, "chat") for f in FACTS]
    forward = Forward(tiny, examples, [TARGET], "cached")
    forward.build_cache(None)
    return forward


def test_activation_cache_rows_share_one_buffer(tiny: LoadedModel) -> None:
    # one allocation for all rows, not one heap block per row between the capture batches'
    # freed activations
    forward = _chat_forward(tiny)
    assert forward.prefix_len >= 4
    storages = {row.untyped_storage().data_ptr() for row in forward.cache}
    assert len(storages) == 1
    assert [len(row) for row in forward.cache] == [len(e.input_ids) - forward.prefix_len for e in forward.examples]
    # and one zero row after them, which padding reads
    width = forward.cache[0].shape[-1]
    assert sum(row.numel() for row in forward.cache) + width == forward.cache[0].untyped_storage().nbytes() // 4


def test_activation_cache_gathers_a_padded_batch_in_one_index(tiny: LoadedModel) -> None:
    # what the cached loop feeds the upper layers: the chosen rows, right-padded with zeros
    forward = _chat_forward(tiny)
    assert forward.cache is not None
    chosen = [3, 0, 2] if len(forward.cache) > 3 else [1, 0]
    index = forward.cache.gather_index(chosen)
    expected = torch.nn.utils.rnn.pad_sequence([forward.cache[i] for i in chosen], batch_first=True)
    assert torch.equal(forward.cache.padded(index), expected)
    assert ((index != forward.cache.pad_row).sum(1) == torch.tensor([len(forward.cache[i]) for i in chosen])).all()


def test_activation_cache_reports_the_rows_captured_as_train_progress(tiny: LoadedModel) -> None:
    # the engine's one progress type: the cache phase counts rows, ending at all of them
    examples = [build_example(tiny.tokenizer, f.prompt, f.answer, "chat") for f in FACTS]
    reports: list[TrainProgress] = []
    Forward(tiny, examples, [TARGET], "cached").build_cache(reports.append)
    assert reports and all(p.phase == "cache" and p.steps_per_epoch == len(examples) for p in reports)
    assert [p.step for p in reports] == sorted(p.step for p in reports) and reports[-1].step == len(examples)


def test_activation_cache_runs_the_shared_prefix_once(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # the capture runs the template's system turn once and each row's own tokens after its keys
    # and values; the rows must equal a capture of whole rows (also the fallback when an
    # architecture cannot take the prefix's keys and values)
    whole_calls: list[list[int]] = []
    real_whole = Forward._capture_whole
    monkeypatch.setattr(Forward, "_capture_whole",
                        lambda self, c, idx: whole_calls.append(list(idx)) or real_whole(self, c, idx))
    shared = _chat_forward(tiny)
    assert whole_calls == [] and shared.prefix_len >= 4

    def cannot(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no KV cache here")

    monkeypatch.setattr(Forward, "_capture_after_prefix", cannot)
    whole = _chat_forward(tiny)
    assert sorted(i for idx in whole_calls for i in idx) == list(range(len(FACTS)))
    assert "shared-prefix capture failed" in caplog.text
    assert whole.prefix_len == shared.prefix_len and whole.offsets == shared.offsets
    torch.testing.assert_close(shared.prefix_hidden, whole.prefix_hidden, rtol=1e-5, atol=1e-5)
    for a, b in zip(shared.cache, whole.cache):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dropping_the_shared_prefix_keeps_the_losses(tiny: LoadedModel) -> None:
    # the fallback when a shared-prefix forward disagrees with the reference: whole rows again
    forward = _chat_forward(tiny)
    with torch.no_grad():
        before = forward.sample_losses(range(len(FACTS)))
        prefix = forward.prefix_hidden[0].clone()
        forward._drop_shared_prefix()
        after = forward.sample_losses(range(len(FACTS)))
    assert forward.prefix_len == 0 and forward.prefix_hidden is None
    assert len({row.untyped_storage().data_ptr() for row in forward.cache}) == 1
    assert all(torch.equal(row[: len(prefix)], prefix) for row in forward.cache)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
