from __future__ import annotations

import pytest
import torch

from locft.engine import token_loss
from locft.engine.token_loss import head_token_losses, is_frozen_linear, logits_token_losses

VOCAB, WIDTH, ROWS = 50, 8, 11


def _targets(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows 0-4 one-hot on a label, rows 5-10 a renormalized top-3 distribution (soft targets)."""
    targets = torch.zeros((ROWS, 3), dtype=torch.long)
    weights = torch.zeros((ROWS, 3))
    constant = torch.zeros(ROWS)
    targets[:, 0] = torch.randint(VOCAB, (ROWS,), generator=generator)
    weights[:5, 0] = 1.0
    targets[5:] = torch.stack([torch.randperm(VOCAB, generator=generator)[:3] for _ in range(ROWS - 5)])
    p = torch.rand((ROWS - 5, 3), generator=generator).softmax(-1)
    weights[5:] = p
    constant[5:] = (p * p.log()).sum(-1)
    return targets, weights, constant


@pytest.mark.parametrize("chunk_rows", [3, 128])  # chunks that split the rows unevenly, and one chunk
def test_head_loss_matches_logits_loss_in_value_and_gradient(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    monkeypatch.setattr(token_loss, "_CHUNK_ROWS", chunk_rows)
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=True).requires_grad_(False)
    targets, weights, constant = _targets(generator)
    row_scale = torch.rand(ROWS, generator=generator)  # per-row weights, as per-sample means apply

    hidden = torch.randn((ROWS, WIDTH), generator=generator, requires_grad=True)
    expected = logits_token_losses(head(hidden), targets, weights, constant)
    (expected * row_scale).sum().backward()
    expected_grad = hidden.grad.clone()

    hidden.grad = None
    got = head_token_losses(hidden, head, targets, weights, constant)
    (got * row_scale).sum().backward()

    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(hidden.grad, expected_grad)
    assert bool((got[:5] > 0).all())  # cross-entropy rows
    assert bool((got[5:] >= -1e-6).all())  # KL rows: never negative


def test_head_loss_is_the_cross_entropy_for_one_hot_rows() -> None:
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False).requires_grad_(False)
    hidden = torch.randn((ROWS, WIDTH))
    labels = torch.randint(VOCAB, (ROWS,))
    got = head_token_losses(hidden, head, labels[:, None], torch.ones((ROWS, 1)), torch.zeros(ROWS))
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(head(hidden), labels, reduction="none"))


def test_only_a_frozen_linear_head_takes_the_fused_path() -> None:
    head = torch.nn.Linear(WIDTH, VOCAB)
    assert not is_frozen_linear(head)
    assert is_frozen_linear(head.requires_grad_(False))
    assert not is_frozen_linear(torch.nn.Sequential(head))
