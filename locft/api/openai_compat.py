"""OpenAI-compatible request and response models (completions and chat completions), pydantic.

The request models are strict (no coercion: "10" is not an integer, true is not a number) and
check types and ranges; FastAPI validates bodies against them and the app turns every
validation error into a 400 in OpenAI's error shape (locft.api.app). What a schema cannot say
(a prompt's length in characters, unsupported values, the model's name) is checked by
`parse_completion` / `parse_chat`, which turn a validated body into `Completion`. The response
models are what the `openai` client reads; they also make /openapi.json. Greedy unless
temperature > 0.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from locft.api.errors import ApiError, bad_request
from locft.serving.generation import GenerationResult, TokenLogprob
from locft.serving.served_version import ServingError, parse_model_name

MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_STOPS = 16  # OpenAI allows 4; lm-eval tasks send more (their `until` + the eos string)
MAX_LOGPROBS = 20
CHAT_ROLES = {"system", "developer", "user", "assistant"}
MAX_TOKENS_CEILING = 1 << 20  # the schema's bound; serve.max_tokens_limit is checked per server


class StrictModel(BaseModel):
    # Unknown fields are ignored (clients send `user`, `metadata`, ...); known ones are typed strictly.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(StrictModel):
    include_usage: bool | None = None


class _Sampling(StrictModel):
    model: str | None = Field(None, description="'locft' (the promoted version) or 'locft-v<N>'")
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # accepted with their default values only (anything else is a 400 `unsupported`)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: Any | None = None
    tools: Any | None = None
    functions: Any | None = None
    response_format: Any | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt`: a string, a list of strings, a list of token ids, or a list
    of token-id lists (what lm-eval sends); each is one choice."""

    prompt: str | list[int] | list[str] | list[list[int]] | None = None
    max_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_CEILING)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: Any | None = None


class TextPart(StrictModel):
    type: str | None = None
    text: str | None = None


class ChatMessage(StrictModel):
    role: str | None = None
    content: str | list[TextPart] | None = None


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: the messages go through the model's chat template."""

    messages: list[ChatMessage] | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(StrictModel):
    prompt: str | None = None
    add_special_tokens: bool | None = None


class DetokenizeRequest(StrictModel):
    tokens: list[int] | None = None


# ---- responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class _Envelope(BaseModel):
    id: str
    object: str
    created: int
    model: str = Field(description="the version that answered: locft-v<N>")
    system_fingerprint: str = Field(description="the version and its snapshot digest")
    locft_version: int


class CompletionResponse(_Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[dict[str, Any]] = []


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatResponse(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "locft"
    locft_state: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


@dataclass
class Completion:
    """A validated completions or chat request."""

    model: str
    version_id: int | None
    prompts: list[list[int]]  # token ids, one list per choice
    prompt_texts: list[str]  # for echo
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    chat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ---- checks a schema cannot express -------------------------------------------------------------


def _stop(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} sequences", "stop", "out_of_range")
    if any(not s for s in stops):
        raise bad_request("stop sequences must not be empty", "stop", "invalid_value")
    return tuple(stops)


def _unsupported(body: _Sampling) -> None:
    """Parameters whose non-default values would change the answer in ways we do not implement."""
    if body.n not in (None, 1):
        raise bad_request("only n = 1 is supported", "n", "unsupported")
    if body.best_of not in (None, 1):
        raise bad_request("only best_of = 1 is supported", "best_of", "unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0.0):
            raise bad_request(f"{name} is not supported (use 0)", name, "unsupported")
    for name in ("logit_bias", "suffix", "tools", "functions", "response_format"):
        if getattr(body, name, None):
            raise bad_request(f"{name} is not supported by this server", name, "unsupported")


def _model(body: _Sampling) -> tuple[str, int | None]:
    if body.model is None:
        raise bad_request("model is required ('locft' serves the promoted version)", "model", "missing")
    try:
        return body.model, parse_model_name(body.model)
    except ServingError as exc:
        raise ApiError(404, str(exc), "model", "model_not_found") from None


def _max_tokens(value: int | None, default: int, lo: int, hi: int, name: str = "max_tokens") -> int:
    if value is None:
        return default
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}, got {value}", name, "out_of_range")
    return value


def _common(body: _Sampling) -> dict[str, Any]:
    return {
        "stop": _stop(body.stop),
        "temperature": 0.0 if body.temperature is None else body.temperature,
        "top_p": body.top_p or 1.0,
        "seed": body.seed,
        "stream": bool(body.stream),
        "include_usage": bool(body.stream_options and body.stream_options.include_usage),
    }


def parse_completion(body: CompletionRequest, tokenizer: Any, max_prompt_chars: int,
                     max_tokens_limit: int) -> Completion:
    """POST /v1/completions as a `Completion`. Raw text: no chat template."""
    from locft.engine.data import encode_prompt

    model, version_id = _model(body)
    _unsupported(body)
    raw = body.prompt
    if raw is None:
        raise bad_request("prompt is required", "prompt", "missing")
    items: list[Any] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
    if not items:
        raise bad_request("prompt must be a non-empty string, list of strings, or list of token ids", "prompt",
                          "invalid_type")
    if len(items) > MAX_PROMPTS:
        raise bad_request(f"at most {MAX_PROMPTS} prompts per request", "prompt", "out_of_range")
    prompts: list[list[int]] = []
    texts: list[str] = []
    for item in items:
        if not item:
            raise bad_request("each prompt must be a non-empty string or a list of token ids", "prompt",
                              "invalid_value" if isinstance(item, str) else "invalid_type")
        if len(item) > max_prompt_chars:
            unit = "characters" if isinstance(item, str) else "tokens"
            raise bad_request(f"the prompt has {len(item)} {unit}; the limit is {max_prompt_chars} "
                              "(serve.max_prompt_chars)", "prompt", "prompt_too_long")
        if isinstance(item, str):
            prompts.append(encode_prompt(tokenizer, item, "raw"))
            texts.append(item)
        else:
            prompts.append(list(item))
            texts.append("")  # decoded lazily, only for echo
    echo = bool(body.echo)
    max_tokens = _max_tokens(body.max_tokens, 16, 0 if echo else 1, max_tokens_limit)
    return Completion(model, version_id, prompts, texts, max_tokens, logprobs=body.logprobs, echo=echo,
                      **_common(body))


def _message_text(message: ChatMessage, i: int) -> tuple[str, str]:
    role = message.role
    if role not in CHAT_ROLES:
        raise bad_request(f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                          f"messages[{i}].role", "invalid_value")
    content = message.content
    if isinstance(content, list):  # content parts: only text
        if not all(p.type == "text" and p.text is not None for p in content):
            raise bad_request(f"messages[{i}].content: only text parts are supported",
                              f"messages[{i}].content", "unsupported")
        content = "".join(p.text or "" for p in content)
    if content is None:
        raise bad_request(f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_type")
    return ("system" if role == "developer" else role), content


def parse_chat(body: ChatRequest, tokenizer: Any, max_prompt_chars: int, max_tokens_limit: int) -> Completion:
    """POST /v1/chat/completions as a `Completion` (one user turn is encoded exactly like a fact
    trained with prompt_format 'chat')."""
    from locft.serving.generation import encode_messages

    model, version_id = _model(body)
    _unsupported(body)
    if body.messages is None:
        raise bad_request("messages is required", "messages", "missing")
    if not body.messages:
        raise bad_request("messages must be a non-empty list", "messages", "invalid_type")
    turns = [_message_text(m, i) for i, m in enumerate(body.messages)]
    chars = sum(len(c) for _, c in turns)
    if chars > max_prompt_chars:
        raise bad_request(f"the messages have {chars} characters; the limit is {max_prompt_chars} "
                          "(serve.max_prompt_chars)", "messages", "prompt_too_long")
    try:
        ids = encode_messages(tokenizer, [{"role": r, "content": c} for r, c in turns])
    except ServingError:
        raise
    except Exception as exc:  # a template may refuse an order of roles (e.g. two system turns)
        raise bad_request(f"the chat template refused these messages: {exc}", "messages", "invalid_value") from None
    if body.max_completion_tokens is not None:
        max_tokens = _max_tokens(body.max_completion_tokens, max_tokens_limit, 1, max_tokens_limit,
                                 "max_completion_tokens")
    else:
        max_tokens = _max_tokens(body.max_tokens, max_tokens_limit, 1, max_tokens_limit)
    logprobs = None
    if body.logprobs:
        logprobs = body.top_logprobs or 0
    elif body.top_logprobs is not None:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    return Completion(model, version_id, [ids], [turns[-1][1]], max_tokens, logprobs=logprobs, chat=True,
                      **_common(body))


# ---- responses -------------------------------------------------------------------------------

_ids = itertools.count(1)


def request_id(prefix: str) -> str:
    """Unique ids for responses (`cmpl-...`, `chatcmpl-...`)."""
    return f"{prefix}-{int(time.time() * 1000):x}{next(_ids):06x}"


def finite(x: float | None) -> float | None:
    """JSON has no -inf: a logprob of -inf is reported as a very negative number."""
    if x is None or math.isfinite(x):
        return x
    return -9999.0


def _top_map(top: Sequence[tuple[int, str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, text, lp in top:
        out.setdefault(text, finite(lp) or 0.0)
    return out


def completion_logprobs(tokens: Sequence[TokenLogprob], offset0: int = 0) -> CompletionLogprobs:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[finite(t.logprob) for t in tokens],
        top_logprobs=[None if t.logprob is None else _top_map(t.top) for t in tokens],
        text_offset=offsets,
    )


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> ChatLogprobs:
    def entry(text: str, lp: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": finite(lp), "bytes": list(text.encode("utf-8"))}

    return ChatLogprobs(content=[ChatTokenLogprob(**entry(t.token, t.logprob),
                                                  top_logprobs=[entry(x, lp) for _, x, lp in t.top])
                                 for t in tokens])


def usage(results: Sequence[GenerationResult]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _envelope(rid: str, created: int, version: Any) -> dict[str, Any]:
    return {"id": rid, "created": created, "model": version.name, "system_fingerprint": version.fingerprint,
            "locft_version": version.id}


def _finish(reason: str) -> Literal["stop", "length"]:
    return "length" if reason == "length" else "stop"


def completion_response(req: Completion, rid: str, results: Sequence[GenerationResult],
                        prompt_texts: Sequence[str]) -> CompletionResponse:
    choices = []
    for i, (r, ptext) in enumerate(zip(results, prompt_texts)):
        text = (ptext + r.text) if req.echo else r.text
        lp = None
        if req.logprobs is not None:
            tokens = (r.prompt_logprobs or []) if req.echo else []
            lp = completion_logprobs(tokens + (r.logprobs or []))
        choices.append(CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=_finish(r.finish_reason)))
    return CompletionResponse(**_envelope(rid, int(time.time()), results[0].version), choices=choices,
                              usage=usage(results))


def chat_response(req: Completion, rid: str, result: GenerationResult) -> ChatResponse:
    choice = ChatChoice(
        index=0, message=ChatResponseMessage(content=result.text),
        logprobs=chat_logprobs(result.logprobs or []) if req.logprobs is not None else None,
        finish_reason=_finish(result.finish_reason),
    )
    return ChatResponse(**_envelope(rid, int(time.time()), result.version), choices=[choice], usage=usage([result]))


# Stream chunks are built as plain dicts: one per generated piece, where a model per chunk
# would only cost time (their shape is OpenAI's, as the `openai` client's stream parser reads).


def completion_chunk(rid: str, created: int, version: Any, index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {**_envelope(rid, created, version), "object": "text_completion",
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_chunk(rid: str, created: int, version: Any, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {**_envelope(rid, created, version), "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(kind: str, rid: str, created: int, version: Any, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return {**_envelope(rid, created, version), "object": kind, "choices": [], "usage": usage(results).model_dump()}
