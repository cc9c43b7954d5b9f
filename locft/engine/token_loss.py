"""Per-token training loss through a frozen output head, without holding full-vocabulary logits.

A token's loss is the cross-entropy from the head's next-token distribution to a target
distribution over a few token ids: one-hot on the label for an edit, or the base model's
renormalized top-k for a replay prompt (KL up to that distribution's entropy, `constant`).

Computing it as logits -> log_softmax -> gather keeps several [rows, vocabulary] tensors alive
until backward: for a micro-batch of 32 replay rows with 16 target tokens each and a 49,152-token
vocabulary, about 100 MiB apiece. The head is frozen, so the only gradient needed is the one
with respect to the hidden states, and a token's loss depends on its own hidden state only:
`head_token_losses` computes the loss and that gradient together, a few rows at a time, and keeps
just the gradient ([rows, hidden]) for backward. Same values, same gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_CHUNK_ROWS = 128  # rows whose logits exist at once: 24 MiB each at a 49,152-token vocabulary


class _FrozenHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, target_weights: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
        losses = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, len(hidden), _CHUNK_ROWS):
            rows = slice(start, start + _CHUNK_ROWS)
            log_q = F.linear(hidden[rows], weight, bias).float().log_softmax(-1)
            w = target_weights[rows]
            losses[rows] = constant[rows] - (w * log_q.gather(1, targets[rows])).sum(-1)
            if grad is not None:
                # d loss / d logits = softmax * sum(w) - w scattered onto the target ids
                d_logits = log_q.exp_().mul_(w.sum(-1, keepdim=True)).scatter_add_(1, targets[rows], -w)
                grad[rows] = (d_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_losses.to(grad.dtype)[:, None], None, None, None, None, None


def head_token_losses(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                      target_weights: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """Loss per row of `hidden` [rows, hidden size] under the frozen linear `head`:
    constant - sum_k target_weights[:, k] * log_softmax(head(hidden))[targets[:, k]].

    Differentiable with respect to `hidden` only; the head must not require grad."""
    return _FrozenHeadLoss.apply(hidden, head.weight, head.bias, targets, target_weights, constant)


def is_frozen_linear(module: torch.nn.Module) -> bool:
    """Whether `module` is a plain linear layer none of whose parameters train (head_token_losses applies)."""
    return isinstance(module, torch.nn.Linear) and not any(p.requires_grad for p in module.parameters())


def logits_token_losses(logits: torch.Tensor, targets: torch.Tensor, target_weights: torch.Tensor,
                        constant: torch.Tensor) -> torch.Tensor:
    """The same loss from logits already computed (the reference loop, a head that trains)."""
    log_q = logits.float().log_softmax(-1)
    return constant - (target_weights * log_q.gather(1, targets)).sum(-1)
