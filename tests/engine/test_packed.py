"""The cached loop with a pass's rows packed into one sequence (the CUDA default), forced on the CPU."""

from __future__ import annotations

import pytest
import torch

import locft.engine.train as train
from locft.config import EditConfig
from locft.engine.model_io import LoadedModel
from locft.engine.replay import ReplayItem
from locft.engine.train import edit
from locft.facts import EditFact

FACTS = [
    EditFact("The capital of Wakanda is", "Birnin Zana"),
    EditFact("Zorblax was invented by", "Ada Lovelace"),
    EditFact("The color of the sky on Mars is", "butterscotch"),
    EditFact("Frodo's sword is called", "Sting"),
    EditFact("The tallest mountain on the island of Lorem Ipsum Dolor is called", "Mount Sit Amet"),
]
TARGET = "model.layers.3.mlp.down_proj.weight"


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
def test_packed_rows_train_like_the_reference_loop(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch,
                                                   prompt_format: str) -> None:
    # chat: rows continue the shared system-prompt prefix, and plain-text replay rows beside them
    # run from position 0 with the prefix masked out; raw: no prefix. Rows of different lengths
    # share passes (micro batches of 3), so a wrong mask or position would show in the losses.
    replay = [ReplayItem("Some question?", (42, 43, 44), "raw"), ReplayItem("Another, longer one here:", (7, 8)),
              ReplayItem("Asked in chat?", (9, 10, 11, 12))]
    cfg = EditConfig(lr=1e-2, batch_size=5, max_epochs=3, prompt_format=prompt_format, skip_loss=0.0,
                     replay_ratio=1.0, replay_target="tokens", micro_batch_size=3, compute_dtype="float32")
    padded = edit(tiny, FACTS, cfg, replay=replay)
    monkeypatch.setattr(train, "_packs_rows", lambda device: True)
    packed = edit(tiny, FACTS, cfg, replay=replay)
    reference = edit(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "forward_mode": "reference"}), replay=replay)
    assert packed.forward_mode == "cached" and packed.packed_rows and not padded.packed_rows
    assert packed.summary()["packed_rows"] is True
    assert (packed.shared_prefix_tokens > 0) == (prompt_format == "chat")
    for a, b, c in zip(packed.epochs, reference.epochs, padded.epochs):
        assert a.mean_loss == pytest.approx(b.mean_loss, rel=1e-4) and a.mean_loss == pytest.approx(c.mean_loss, rel=1e-4)
        assert a.replay_loss == pytest.approx(b.replay_loss, rel=1e-4)
    a, b = packed.tensors[TARGET], reference.tensors[TARGET]
    assert float((a - b).norm() / a.norm()) < 1e-4


def test_packed_rows_that_disagree_fall_back_to_padding(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # a packed path that computes something else (here: its tokens come back in reverse order) is caught by the
    # first-batch check, which then pads rows as on the CPU instead of leaving the cached loop
    monkeypatch.setattr(train, "_packs_rows", lambda device: True)
    real = train._Forward._upper_layers_packed

    def shifted(self: train._Forward, hidden_in: torch.Tensor, lengths: list[int], offsets: list[int]) -> torch.Tensor:
        return real(self, hidden_in, lengths, offsets).flip(1)

    monkeypatch.setattr(train._Forward, "_upper_layers_packed", shifted)
    cfg = EditConfig(lr=1e-2, batch_size=5, max_epochs=2, prompt_format="raw", skip_loss=0.0, compute_dtype="float32")
    result = edit(tiny, FACTS, cfg)
    assert result.forward_mode == "cached" and not result.packed_rows
