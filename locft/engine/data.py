"""Facts -> token ids: prompt (raw or chat template) + target (" " + answer + eos), target-only loss.

The same `encode_prompt` is used for training and for asking, so an edit made through the
CLI is what a chat client sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from locft.errors import ConfigError


def resolve_prompt_format(requested: str, tokenizer: Any) -> Literal["chat", "raw"]:
    """'auto' -> 'chat' when the tokenizer has a chat template, else 'raw'."""
    if requested == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if requested == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("edit.prompt_format is 'chat' but this tokenizer has no chat template; use 'raw'")
        return "chat"
    if requested == "raw":
        return "raw"
    raise ConfigError(f"unknown prompt format {requested!r}")


def encode_prompt(tokenizer: Any, prompt: str, prompt_format: str) -> list[int]:
    if prompt_format == "chat":
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    return list(tokenizer(prompt, add_special_tokens=True).input_ids)


def encode_target(tokenizer: Any, answer: str, prompt_format: str) -> list[int]:
    # Raw prompts continue the text, so the answer is a new word; a chat turn starts fresh.
    text = " " + answer if prompt_format == "raw" else answer
    return list(tokenizer(text, add_special_tokens=False).input_ids) + [tokenizer.eos_token_id]


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt ids then target ids; loss only on the target."""

    input_ids: tuple[int, ...]
    prompt_len: int

    @property
    def target_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


def build_example(tokenizer: Any, prompt: str, answer: str, prompt_format: str) -> Example:
    p = encode_prompt(tokenizer, prompt, prompt_format)
    t = encode_target(tokenizer, answer, prompt_format)
    return Example(tuple(p + t), len(p))


def example_from_ids(prompt_ids: Sequence[int], target_ids: Sequence[int]) -> Example:
    return Example(tuple(prompt_ids) + tuple(target_ids), len(prompt_ids))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T], from lengths (pad == eos here, so never from ids)
    # positions whose logits predict a target token, and those tokens (flattened over the batch)
    rows: torch.Tensor
    cols: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor  # [B] full sequence lengths
    target_lens: torch.Tensor  # [B]


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device` in one copy that does not wait for the device: from pinned memory on
    CUDA (the host's allocator keeps the pinned block until the copy has run)."""
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    """The examples as one right-padded batch on `device`.

    Built with a fixed number of tensor operations whatever the batch size (no Python loop over
    rows, which a training step would pay once per row on the host), and sent to the device in
    one copy: the parts travel as one int64 buffer, pinned on CUDA so that the copy runs
    asynchronously, and are split there into views."""
    n = len(examples)
    lengths = torch.tensor([len(e.input_ids) for e in examples], dtype=torch.long)
    prompt_lens = torch.tensor([e.prompt_len for e in examples], dtype=torch.long)
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]  # [n, width]: each row's own positions
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)  # row-major order
    target_lens = lengths - prompt_lens
    rows = torch.repeat_interleave(torch.arange(n), target_lens)
    # the k-th target token of a row sits at prompt_len + k; the logit at the position before predicts it
    first = target_lens.cumsum(0) - target_lens
    cols = prompt_lens[rows] - 1 + (torch.arange(len(rows)) - first[rows])
    labels = ids[rows, cols + 1]
    parts = (ids.view(-1), mask.view(-1).long(), rows, cols, labels, target_lens)
    flat = to_device(torch.cat(parts), device)
    ids_d, mask_d, rows_d, cols_d, labels_d, target_lens_d = flat.split([len(p) for p in parts])
    return Batch(input_ids=ids_d.view(n, width), attention_mask=mask_d.view(n, width), rows=rows_d, cols=cols_d,
                 labels=labels_d, lengths=lengths, target_lens=target_lens_d)


def per_sample_mean(token_losses: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean token loss per sample (the recipe: per-sample mean, then batch mean)."""
    sums = torch.zeros(len(batch.target_lens), dtype=token_losses.dtype, device=token_losses.device)
    sums.index_add_(0, batch.rows, token_losses)
    return sums / batch.target_lens.to(token_losses.dtype)
