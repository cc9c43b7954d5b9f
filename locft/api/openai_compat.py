"""OpenAI-compatible request parsing and response shapes (completions and chat completions).

Parsing turns a JSON body into `Completion` (validated: every bad value is an ApiError 4xx naming
its parameter, never an exception from deeper down); the `*_response` / `*_chunk` functions
build the bodies the `openai` client's pydantic models read. Greedy unless temperature > 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from locft.api.errors import ApiError, bad_request
from locft.serving import GenerationResult, ServingError, TokenLogprob, finite, parse_model_name

MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_STOPS = 16  # OpenAI allows 4; lm-eval tasks send more (their `until` + the eos string)
MAX_LOGPROBS = 20
CHAT_ROLES = {"system", "developer", "user", "assistant"}


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


# ---- field validation ------------------------------------------------------------------------


def _int(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {value!r}", name, "invalid_type")
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}, got {value}", name, "out_of_range")
    return value


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise bad_request(f"{name} must be a number, got {value!r}", name, "invalid_type")
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}, got {value}", name, "out_of_range")
    return float(value)


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {value!r}", name, "invalid_type")
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} sequences", "stop", "out_of_range")
    if any(not s for s in stops):
        raise bad_request("stop sequences must not be empty", "stop", "invalid_value")
    return tuple(stops)


def _unsupported(body: Mapping[str, Any]) -> None:
    """Parameters whose non-default values would change the answer in ways we do not implement."""
    n = _int(body, "n", 1, 1, 128)
    if n != 1:
        raise bad_request("only n = 1 is supported", "n", "unsupported")
    if _int(body, "best_of", 1, 1, 128) != 1:
        raise bad_request("only best_of = 1 is supported", "best_of", "unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad_request(f"{name} is not supported (use 0)", name, "unsupported")
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported", "logit_bias", "unsupported")
    if body.get("suffix"):
        raise bad_request("suffix is not supported", "suffix", "unsupported")
    for name in ("tools", "functions", "response_format"):
        if body.get(name):
            raise bad_request(f"{name} is not supported by this server", name, "unsupported")


def _model(body: Mapping[str, Any]) -> tuple[str, int | None]:
    model = body.get("model")
    if model is None:
        raise bad_request("model is required ('locft' serves the promoted version)", "model", "missing")
    if not isinstance(model, str):
        raise bad_request("model must be a string", "model", "invalid_type")
    try:
        return model, parse_model_name(model)
    except ServingError as exc:
        raise ApiError(404, str(exc), "model", "model_not_found") from None


def _common(body: Mapping[str, Any], max_tokens_limit: int) -> dict[str, Any]:
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", "stream_options", "invalid_type")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("seed must be an integer", "seed", "invalid_type")
    return {
        "stop": _stop(body),
        "temperature": _number(body, "temperature", 0.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        "seed": seed,
        "stream": _bool(body, "stream", False),
        "include_usage": _bool(stream_options or {}, "include_usage", False),
    }


# ---- requests --------------------------------------------------------------------------------


def parse_completion(body: Mapping[str, Any], tokenizer: Any, max_prompt_chars: int, max_tokens_limit: int) -> Completion:
    """POST /v1/completions. `prompt`: a string, a list of strings, a list of token ids, or a list
    of token-id lists (what lm-eval sends); each is one choice. Raw text: no chat template."""
    from locft.engine.data import encode_prompt

    model, version_id = _model(body)
    _unsupported(body)
    if "prompt" not in body:
        raise bad_request("prompt is required", "prompt", "missing")
    raw = body["prompt"]
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise bad_request("prompt must be a non-empty string, list of strings, or list of token ids", "prompt",
                          "invalid_type")
    if len(items) > MAX_PROMPTS:
        raise bad_request(f"at most {MAX_PROMPTS} prompts per request", "prompt", "out_of_range")
    prompts: list[list[int]] = []
    texts: list[str] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise bad_request("prompt must not be empty", "prompt", "invalid_value")
            if len(item) > max_prompt_chars:
                raise bad_request(f"the prompt has {len(item)} characters; the limit is {max_prompt_chars} "
                                  "(serve.max_prompt_chars)", "prompt", "prompt_too_long")
            prompts.append(encode_prompt(tokenizer, item, "raw"))
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            if len(item) > max_prompt_chars:
                raise bad_request(f"the prompt has {len(item)} tokens; the limit is {max_prompt_chars}", "prompt",
                                  "prompt_too_long")
            prompts.append(list(item))
            texts.append("")  # decoded lazily, only for echo
        else:
            raise bad_request("each prompt must be a non-empty string or a list of token ids", "prompt", "invalid_type")
    echo = _bool(body, "echo", False)
    max_tokens = _int(body, "max_tokens", 16, 0 if echo else 1, max_tokens_limit)
    assert max_tokens is not None
    logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    return Completion(model, version_id, prompts, texts, max_tokens, logprobs=logprobs, echo=echo,
                      **_common(body, max_tokens_limit))


def _message_text(message: Any, i: int) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise bad_request(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise bad_request(f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                          f"messages[{i}].role", "invalid_value")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{i}].content: only text parts are supported",
                                  f"messages[{i}].content", "unsupported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad_request(f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_type")
    return ("system" if role == "developer" else role), content


def parse_chat(body: Mapping[str, Any], tokenizer: Any, max_prompt_chars: int, max_tokens_limit: int) -> Completion:
    """POST /v1/chat/completions: the messages through the model's chat template (one user turn
    is encoded exactly like a fact trained with prompt_format 'chat')."""
    from locft.serving import encode_messages

    model, version_id = _model(body)
    _unsupported(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages is required", "messages", "missing")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages", "invalid_type")
    turns = [_message_text(m, i) for i, m in enumerate(messages)]
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
    if "max_completion_tokens" in body and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", max_tokens_limit, 1, max_tokens_limit)
    else:
        max_tokens = _int(body, "max_tokens", max_tokens_limit, 1, max_tokens_limit)
    assert max_tokens is not None
    logprobs = None
    if _bool(body, "logprobs", False):
        logprobs = _int(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
    return Completion(model, version_id, [ids], [turns[-1][1]], max_tokens, logprobs=logprobs, chat=True,
                      **_common(body, max_tokens_limit))


# ---- responses -------------------------------------------------------------------------------


def _top_map(top: Sequence[tuple[int, str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, text, lp in top:
        out.setdefault(text, finite(lp) or 0.0)
    return out


def completion_logprobs(tokens: Sequence[TokenLogprob], offset0: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [finite(t.logprob) for t in tokens],
        "top_logprobs": [None if t.logprob is None else _top_map(t.top) for t in tokens],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    def entry(text: str, lp: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": finite(lp), "bytes": list(text.encode("utf-8"))}

    return {"content": [entry(t.token, t.logprob) | {"top_logprobs": [entry(x, lp) for _, x, lp in t.top]}
                        for t in tokens], "refusal": None}


def usage(results: Sequence[GenerationResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _envelope(kind: str, rid: str, created: int, result_version: Any) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": created, "model": result_version.name,
            "system_fingerprint": result_version.fingerprint, "locft_version": result_version.id}


def completion_response(req: Completion, rid: str, results: Sequence[GenerationResult], prompt_texts: Sequence[str]) -> dict[str, Any]:
    created = int(time.time())
    choices = []
    for i, (r, ptext) in enumerate(zip(results, prompt_texts)):
        text = (ptext + r.text) if req.echo else r.text
        lp = None
        if req.logprobs is not None:
            tokens = (r.prompt_logprobs or []) if req.echo else []
            lp = completion_logprobs(tokens + (r.logprobs or []))
        choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": _finish(r.finish_reason)})
    return _envelope("text_completion", rid, created, results[0].version) | {"choices": choices, "usage": usage(results)}


def chat_response(req: Completion, rid: str, result: GenerationResult) -> dict[str, Any]:
    created = int(time.time())
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": result.text, "refusal": None},
        "logprobs": chat_logprobs(result.logprobs or []) if req.logprobs is not None else None,
        "finish_reason": _finish(result.finish_reason),
    }
    return _envelope("chat.completion", rid, created, result.version) | {"choices": [choice], "usage": usage([result])}


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def completion_chunk(rid: str, created: int, version: Any, index: int, text: str, finish: str | None) -> dict[str, Any]:
    return _envelope("text_completion", rid, created, version) | {
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_chunk(rid: str, created: int, version: Any, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return _envelope("chat.completion.chunk", rid, created, version) | {
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(kind: str, rid: str, created: int, version: Any, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return _envelope(kind, rid, created, version) | {"choices": [], "usage": usage(results)}
