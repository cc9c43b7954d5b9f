"""One batch of requests completed in one left-padded `generate` call, with the weights as they are.

Honours per-request `max_tokens`, `stop` strings, eos, optional sampling, streaming deltas and
logprobs (also of the prompt itself: `echo`, what lm-eval's loglikelihood needs). Runs on the
model server's worker thread only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from locft.serving.served_version import ServedVersion, ServingError

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), best first


@dataclass
class GenerationRequest:
    """One prompt to complete. `version_id` None: the active version at submission."""

    prompt_ids: list[int]
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob + top k
    echo_logprobs: bool = False  # also the logprobs of the prompt tokens
    on_delta: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    version_id: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sampling_key(self) -> tuple[Any, ...]:
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    version: ServedVersion
    logprobs: list[TokenLogprob] | None = None  # one per generated token (when asked)
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token (echo_logprobs)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)



def encode_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Chat messages -> prompt ids, exactly as `engine.data.encode_prompt(..., 'chat')` encodes a
    single user turn (so a chat client sees the edits trained with the chat format)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ServingError("this model has no chat template: use /v1/completions (raw text) instead")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


@dataclass
class _Row:
    req: GenerationRequest
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed
    done: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters must not be streamed yet: an incomplete UTF-8 sequence, or
    the start of a stop string that the next tokens may complete."""
    keep = 0
    if text.endswith("\ufffd"):
        keep = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


class _Tracker:
    """Both a LogitsProcessor (remembers this step's log-probabilities when logprobs are asked)
    and a StoppingCriteria (per row: eos, stop strings, max_tokens, cancel; streams deltas)."""

    def __init__(self, rows: list[_Row], width: int, tokenizer: Any, eos_ids: set[int], top_k: int):
        self.rows, self.width, self.tok, self.eos_ids, self.top_k = rows, width, tokenizer, eos_ids, top_k
        self.want_logprobs = any(r.req.logprobs is not None for r in rows)
        self.step_logprobs: Any = None

    # LogitsProcessor
    def process(self, input_ids: Any, scores: Any) -> Any:
        if self.want_logprobs:
            import torch

            self.step_logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _token_text(self, token_id: int) -> str:
        return str(self.tok.decode([token_id], skip_special_tokens=False))

    # StoppingCriteria
    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        flags = []
        for j, row in enumerate(self.rows):
            if row.done is None:
                self._advance(j, row, int(last[j]))
            flags.append(row.done is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    def _advance(self, j: int, row: _Row, token: int) -> None:
        req = row.req
        if req.cancelled.is_set():
            row.done = "cancelled"
            return
        # eos counts as a generated token (in ids and logprobs, as OpenAI and vLLM report it: an
        # echo+logprobs request with max_tokens=1 always gets one token after the prompt, which
        # lm-eval relies on), but it is not text
        row.ids.append(token)
        if req.logprobs is not None and self.step_logprobs is not None:
            lp = self.step_logprobs[j]
            top: tuple[tuple[int, str, float], ...] = ()
            if req.logprobs > 0:
                values, indices = lp.topk(req.logprobs)
                top = tuple((int(i), self._token_text(int(i)), float(v))
                            for v, i in zip(values.tolist(), indices.tolist()))
            row.logprobs.append(TokenLogprob(token, self._token_text(token), float(lp[token]), top))
        if token in self.eos_ids:
            row.done = "stop"
        else:
            text = str(self.tok.decode(row.ids, skip_special_tokens=True))
            cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, row.done = text[:cut], "stop"
            elif len(row.ids) >= req.max_tokens:
                row.done = "length"
            row.text = text
        if req.on_delta is not None:
            end = len(row.text) if row.done else len(row.text) - _holdback(row.text, req.stop)
            if end > row.emitted:
                piece, row.emitted = row.text[row.emitted:end], end
                try:
                    req.on_delta(piece)
                except Exception:  # noqa: BLE001 - a consumer's failure must not stop the batch
                    log.exception("streaming callback failed; cancelling that request")
                    req.cancelled.set()


def _prompt_logprobs(loaded: LoadedModel, ids: list[int], top_k: int) -> list[TokenLogprob]:
    """Per prompt token: log P(token | tokens before it) under the current weights (one forward)."""
    import torch

    tok = loaded.tokenizer
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0].float()
    lps = torch.log_softmax(logits[:-1], dim=-1)
    out = [TokenLogprob(ids[0], str(tok.decode([ids[0]])), None)]
    chosen = lps.gather(1, torch.tensor(ids[1:], device=lps.device)[:, None])[:, 0].tolist()
    if top_k > 0:
        values, indices = lps.topk(top_k, dim=-1)
        values_l, indices_l = values.tolist(), indices.tolist()
    for pos, token in enumerate(ids[1:]):
        top: tuple[tuple[int, str, float], ...] = ()
        if top_k > 0:
            top = tuple((i, str(tok.decode([i])), v) for v, i in zip(values_l[pos], indices_l[pos]))
        out.append(TokenLogprob(token, str(tok.decode([token])), float(chosen[pos]), top))
    return out


def generate_batch(
    loaded: LoadedModel, requests: Sequence[GenerationRequest], version: ServedVersion
) -> list[GenerationResult]:
    """Complete `requests` in one left-padded `generate` call with the weights as they are now.

    All requests must share sampling settings (the worker batches them that way)."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    tok = loaded.tokenizer
    model = loaded.model
    gen_cfg = getattr(model, "generation_config", None)
    eos_ids = {int(tok.eos_token_id)}
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    eos_ids.update([cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or ()))
    prompt_lp: list[list[TokenLogprob] | None] = []
    for r in requests:
        if r.echo_logprobs and len(r.prompt_ids) > 0:
            prompt_lp.append(_prompt_logprobs(loaded, r.prompt_ids, r.logprobs or 0))
        else:
            prompt_lp.append(None)
    rows = [_Row(r) for r in requests]
    live = [row for row in rows if row.req.max_tokens > 0 and not row.req.cancelled.is_set()]
    for row in rows:
        if row.req.cancelled.is_set():
            row.done = "cancelled"
        elif row.req.max_tokens <= 0:
            row.done = "length"
    if live:
        width = max(len(row.req.prompt_ids) for row in live)
        ids = torch.full((len(live), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for j, row in enumerate(live):
            seq = row.req.prompt_ids
            ids[j, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[j, width - len(seq):] = 1
        first = live[0].req
        tracker = _Tracker(live, width, tok, eos_ids, max(r.req.logprobs or 0 for r in live))
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": None}
            if first.seed is not None:
                torch.manual_seed(first.seed)

        class _Processor:  # transformers calls processors as f(input_ids, scores)
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                return tracker.process(input_ids, scores)

        with torch.inference_mode():
            model.generate(
                input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                max_new_tokens=max(row.req.max_tokens for row in live), num_beams=1,
                pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos_ids),
                stopping_criteria=StoppingCriteriaList([tracker]),
                logits_processor=LogitsProcessorList([_Processor()]) if tracker.want_logprobs else None,
                **sampling,
            )
        for row in live:
            if row.done is None:  # generate ended first (e.g. its own max length): by length
                row.done = "length"
    return [
        GenerationResult(
            text=row.text, token_ids=row.ids, finish_reason=row.done or "length",
            prompt_tokens=len(row.req.prompt_ids), version=version,
            logprobs=row.logprobs if row.req.logprobs is not None else None, prompt_logprobs=plp,
        )
        for row, plp in zip(rows, prompt_lp)
    ]
