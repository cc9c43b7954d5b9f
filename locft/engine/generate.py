"""Batched greedy generation and the answer-cutting rule of WILD-style evaluation.

An answer is what the model generates, cut at the first newline or eos, and at the first
sentence-ending '.', where a '.' ends the answer only when it cannot belong to it
("St. Louis", "U.S." and "3.5" stay whole).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from locft.engine.data import encode_prompt
from locft.engine.model_io import LoadedModel

# Words that a '.' follows without ending a sentence.
_ABBREVIATIONS = {
    "st", "mt", "ft", "mr", "mrs", "ms", "dr", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "capt",
    "rev", "hon", "no", "vs", "inc", "ltd", "co", "corp", "bros", "univ", "dept", "ave", "blvd", "rd",
    "fr", "sta", "ste", "pres", "gov", "sen", "rep", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "approx", "ca", "vol", "op", "ed", "etc",
}
_SENTENCE_END = re.compile(r"\.(?=\s|$)")


def cut_answer(text: str) -> str:
    """The answer part of a generation: first line, up to a sentence-ending period."""
    text = text.split("\n", 1)[0].strip()
    for m in _SENTENCE_END.finditer(text):
        before = text[: m.start()]
        word = re.split(r"[\s(\"']", before)[-1] if before else ""
        # "U.S." / "J.R.R." (single letters between dots) and known abbreviations keep their dot
        if re.fullmatch(r"(?:[A-Za-z]\.)*[A-Za-z]", word) or word.lower() in _ABBREVIATIONS:
            continue
        return before.strip()
    return text.rstrip()


@dataclass(frozen=True)
class Generation:
    text: str  # decoded continuation up to eos (special tokens removed)
    answer: str  # cut answer
    # generated ids up to and including the first stop token (newline or eos): what a
    # token-level locality check asks the edited model to reproduce
    token_ids: tuple[int, ...]


def stop_token_ids(tokenizer: Any) -> set[int]:
    """eos and every token that contains a newline (byte-level BPE spells it 'Ċ')."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    newline = {i for i, t in enumerate(vocab) if t is not None and ("\n" in t or "Ċ" in t)}
    return newline | {tokenizer.eos_token_id}


class _StopAtNewlineOrEos:
    """Stop a batch once every row has produced a stop token."""

    def __init__(self, stop_ids: torch.Tensor, prompt_width: int):
        self.stop_ids = stop_ids
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width :]
        return torch.isin(generated, self.stop_ids.to(generated.device)).any(dim=1)


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the left (generation continues every row at the same position):
    (input ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, seq in enumerate(rows):
        ids[j, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        mask[j, width - len(seq):] = 1
    return ids, mask


def greedy_generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    prompt_format: str,
    max_new_tokens: int = 32,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Greedy continuations of `prompts` (left-padded batches sorted by length). batch_size None:
    32 on the CPU, on CUDA as many as the free memory holds (engine.device.generation_batch_size)."""
    from transformers import StoppingCriteriaList

    tok = loaded.tokenizer
    encoded = [encode_prompt(tok, p, prompt_format) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    if batch_size is None:
        from locft.engine.device import generation_batch_size

        longest = max((len(e) for e in encoded), default=0)
        batch_size = generation_batch_size(loaded.model, loaded.device, longest + max_new_tokens)
    out: list[Generation | None] = [None] * len(prompts)
    stops = stop_token_ids(tok)
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long)
    model = loaded.model
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = left_padded([encoded[i] for i in idx], tok.pad_token_id)
            width = ids.shape[1]
            stopper = _StopAtNewlineOrEos(stop_tensor, width)
            with torch.no_grad():
                generated = model.generate(
                    input_ids=ids.to(loaded.device),
                    attention_mask=mask.to(loaded.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            for j, i in enumerate(idx):
                new = generated[j, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in stops), len(new) - 1)
                new = new[: end + 1]
                text = tok.decode(new, skip_special_tokens=True)
                out[i] = Generation(text=text, answer=cut_answer(text), token_ids=tuple(new))
            if progress:
                progress(min(b + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return [g for g in out if g is not None]
