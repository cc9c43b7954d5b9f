from __future__ import annotations

import pytest
import torch

from locft.config import EditConfig
from locft.engine.data import encode_prompt, example_from_ids
from locft.engine.model_io import LoadedModel
from locft.engine.null_space import input_second_moments, low_energy_projector
from locft.engine.replay import ReplayItem
from locft.engine.train import edit
from locft.errors import ConfigError
from locft.facts import EditFact

FACTS = [
    EditFact("The capital of Wakanda is", "Birnin Zana"),
    EditFact("Zorblax was invented by", "Ada Lovelace"),
    EditFact("The color of the sky on Mars is", "butterscotch"),
    EditFact("Frodo's sword is called", "Sting"),
]
REPLAY = [ReplayItem(p, (42, 43, 44)) for p in ("Some question?", "Another one:", "Tell me about cats.",
                                                  "The weather today is", "Who wrote Hamlet?")]
TARGET = "model.layers.3.mlp.down_proj.weight"
CFG = EditConfig(lr=1e-2, batch_size=4, max_epochs=3, skip_loss=0.0, stop_loss=0.0, prompt_format="raw",
                 compute_dtype="float32", replay_ratio=1.0, replay_target="tokens")


def test_projector_removes_the_top_directions_and_keeps_the_rest() -> None:
    u = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]
    moment = u @ torch.diag(torch.tensor([100.0, 50, 1, 1, 1, 1, 1, 1], dtype=torch.float64)) @ u.T
    projector, rank = low_energy_projector(moment, 0.9)  # 150 of 156 needs the top two
    assert rank == 2
    torch.testing.assert_close(projector.double() @ u[:, :2], torch.zeros(8, 2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(projector.double() @ u[:, 2:], u[:, 2:], atol=1e-6, rtol=0)
    assert low_energy_projector(moment, 0.5)[1] == 1


def test_the_change_never_touches_the_protected_directions(tiny: LoadedModel) -> None:
    base = dict(tiny.model.named_parameters())[TARGET].detach().clone()
    result = edit(tiny, FACTS, EditConfig(**{**CFG.to_dict(), "null_space_energy": 0.9}), replay=REPLAY)
    rank = result.null_space_ranks[TARGET]
    assert 0 < rank < base.shape[1]
    change = result.tensors[TARGET] - base
    assert change.norm() > 0
    # the protected directions: the top eigenvectors of the replay inputs' second moment
    replay_examples = _replay_examples(tiny)
    _, vectors = torch.linalg.eigh(input_second_moments(tiny, replay_examples, [TARGET])[TARGET])
    top = vectors.flip(1)[:, :rank].float()
    assert (change @ top).norm() < 1e-4 * change.norm()
    plain = edit(tiny, FACTS, CFG, replay=REPLAY).tensors[TARGET] - base
    assert (plain @ top).norm() > 0.01 * plain.norm()  # without it the change does use them


def _replay_examples(tiny: LoadedModel) -> list:
    return [example_from_ids(encode_prompt(tiny.tokenizer, r.prompt, "raw"), r.token_ids) for r in REPLAY]


def test_null_space_needs_replay_and_a_valid_share(tiny: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="replay"):
        edit(tiny, FACTS, EditConfig(**{**CFG.to_dict(), "replay_ratio": 0.0, "null_space_energy": 0.9}))
    with pytest.raises(ConfigError, match="null_space_energy"):
        EditConfig(null_space_energy=1.0)
