"""The OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions
(JSON or server-sent events), and vLLM-style /tokenizer_info, /tokenize, /detokenize.

Generation happens on the ModelServer's single worker thread, which batches concurrent
requests; handlers await its futures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from locft.api import openai_compat as oa
from locft.api.errors import ApiError, bad_request, from_locft_error
from locft.api.json_body import json_router
from locft.api.openai_compat import request_id
from locft.errors import LocftError, NotFoundError
from locft.serving.generation import GenerationRequest, GenerationResult
from locft.serving.served_version import ServingError, model_name

if TYPE_CHECKING:
    from locft.api.app import AppState

log = logging.getLogger("locft.api.server")

REQUEST_TIMEOUT_S = 600.0  # a generation that has not finished by then is reported as 504


async def _wait(gen: GenerationRequest, future: Future[GenerationResult]) -> GenerationResult:
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), REQUEST_TIMEOUT_S)
    except (TimeoutError, asyncio.TimeoutError):
        gen.cancelled.set()
        raise ApiError(504, f"the generation did not finish within {REQUEST_TIMEOUT_S:.0f} s", code="timeout") from None


def _submit(state: AppState, req: oa.Completion, on_delta: list[Callable[[str], None]] | None = None
            ) -> list[tuple[GenerationRequest, Future[GenerationResult]]]:
    server = state.server
    if server.queue_length() >= server.max_queue:
        raise ApiError(503, "the server is busy; retry shortly", code="overloaded")
    try:  # fixed now: hot swaps after this do not affect this request
        version = server.version(req.version_id)
    except NotFoundError as exc:
        raise ApiError(404, str(exc), "model", "model_not_found") from None
    out = []
    for i, ids in enumerate(req.prompts):
        gen = GenerationRequest(
            ids, max_tokens=req.max_tokens, stop=req.stop, temperature=req.temperature, top_p=req.top_p,
            seed=req.seed, logprobs=req.logprobs, echo_logprobs=req.echo and req.logprobs is not None,
            on_delta=on_delta[i] if on_delta else None, version_id=version.id,
        )
        try:
            out.append((gen, server.submit(gen)))
        except BaseException:
            for g, _ in out:
                g.cancelled.set()
            raise
    return out


def _check(state: AppState, ids: list[int], max_tokens: int) -> None:
    try:
        state.server.check_request(GenerationRequest(ids, max_tokens=max_tokens))
    except ServingError as exc:
        raise bad_request(str(exc), "prompt", "context_length_exceeded") from None


def _prompt_texts(state: AppState, req: oa.Completion) -> list[str]:
    tok = state.server.loaded.tokenizer
    return [t if t else str(tok.decode(ids)) for t, ids in zip(req.prompt_texts, req.prompts)]


def _sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def _stream(state: AppState, req: oa.Completion, rid: str) -> StreamingResponse:
    """Server-sent events: one chunk per new piece of text, per choice; then usage (if asked) and
    [DONE]. The worker thread only hands pieces to the event loop; the response writes them."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()

    def put(item: tuple[str, int, Any]) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shut down): nobody is listening
            pass

    def on_delta(i: int) -> Callable[[str], None]:
        return lambda piece: put(("delta", i, piece))

    def on_done(i: int) -> Callable[[Future[GenerationResult]], None]:
        return lambda f: put(("done", i, f))

    # errors before this point are ordinary JSON errors
    jobs = _submit(state, req, [on_delta(i) for i in range(len(req.prompts))])
    for i, (_, future) in enumerate(jobs):
        future.add_done_callback(on_done(i))
    version = state.server.version(jobs[0][0].version_id)
    created = int(time.time())
    kind = "chat.completion.chunk" if req.chat else "text_completion"

    async def body() -> AsyncIterator[bytes]:
        results: dict[int, GenerationResult] = {}
        finished = False
        try:
            if req.chat:
                yield _sse(oa.chat_chunk(rid, created, version, {"role": "assistant", "content": ""}, None))
            elif req.echo:
                for i, text in enumerate(_prompt_texts(state, req)):
                    yield _sse(oa.completion_chunk(rid, created, version, i, text, None))
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while len(results) < len(jobs):
                try:
                    what, i, value = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0.01))
                except (TimeoutError, asyncio.TimeoutError):
                    raise ApiError(504, "the generation did not finish in time", code="timeout") from None
                if what == "delta":
                    yield _sse(oa.chat_chunk(rid, created, version, {"content": value}, None) if req.chat
                               else oa.completion_chunk(rid, created, version, i, value, None))
                    continue
                exc = value.exception()
                if exc is not None:
                    raise exc
                results[i] = result = value.result()
                finish = "length" if result.finish_reason == "length" else "stop"
                yield _sse(oa.chat_chunk(rid, created, version, {}, finish) if req.chat
                           else oa.completion_chunk(rid, created, version, i, "", finish))
            finished = True
            ordered = [results[i] for i in sorted(results)]
            state.metrics.count_tokens(sum(r.prompt_tokens for r in ordered), sum(r.completion_tokens for r in ordered))
            if req.include_usage:
                yield _sse(oa.usage_chunk(kind, rid, created, version, ordered))
            yield _sse("[DONE]")
        except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
            err = exc if isinstance(exc, ApiError) else (
                from_locft_error(exc) if isinstance(exc, LocftError) else ApiError(500, "internal server error"))
            if not isinstance(exc, (ApiError, LocftError)):
                log.exception("stream %s failed", rid)
            yield _sse(err.body())
        finally:
            if not finished:  # an error, or the client went away (the response is cancelled)
                log.info("stream %s ended early; cancelling its generation", rid)
                for gen, _ in jobs:
                    gen.cancelled.set()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Locft-Version": str(version.id)})


def router(state: AppState) -> APIRouter:
    r = json_router()

    def entry(name: str, created: int, locft_state: str | None = None) -> oa.ModelEntry:
        return oa.ModelEntry(id=name, created=created, locft_state=locft_state)

    @r.get("/v1/models", response_model=oa.ModelList, tags=["openai"])
    def models() -> oa.ModelList:
        data = [entry("locft", int(state.server.active.loaded_at))]
        data += [entry(model_name(v.id), int(v.created_at.timestamp()), v.state)
                 for v in state.store.list_versions() if v.snapshot_present]
        return oa.ModelList(data=data)

    @r.get("/v1/models/{name}", response_model=oa.ModelEntry, tags=["openai"])
    def model_one(name: str) -> oa.ModelEntry:
        try:
            version_id = oa.parse_model_name(name)
        except ServingError as exc:
            raise ApiError(404, str(exc), "model", "model_not_found") from None
        if version_id is None:
            return entry("locft", int(state.server.active.loaded_at))
        v = state.store.get_version(version_id)
        return entry(model_name(v.id), int(v.created_at.timestamp()), v.state)

    @r.post("/v1/completions", response_model=oa.CompletionResponse, tags=["openai"],
            responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"}})
    async def completions(body: oa.CompletionRequest, response: Response) -> Any:
        req = oa.parse_completion(body, state.server.loaded.tokenizer, state.serve.max_prompt_chars,
                                  state.serve.max_tokens_limit)
        for ids in req.prompts:
            _check(state, ids, req.max_tokens)
        rid = request_id("cmpl")
        if req.stream:
            return _stream(state, req, rid)
        jobs = _submit(state, req)
        results = [await _wait(g, f) for g, f in jobs]
        state.metrics.count_tokens(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))
        texts = _prompt_texts(state, req) if req.echo else [""] * len(results)
        response.headers["X-Locft-Version"] = str(results[0].version.id)
        return oa.completion_response(req, rid, results, texts)

    @r.post("/v1/chat/completions", response_model=oa.ChatResponse, tags=["openai"],
            responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream is true"}})
    async def chat(body: oa.ChatRequest, response: Response) -> Any:
        req = oa.parse_chat(body, state.server.loaded.tokenizer, state.serve.max_prompt_chars,
                            state.serve.max_tokens_limit)
        _check(state, req.prompts[0], req.max_tokens)
        rid = request_id("chatcmpl")
        if req.stream:
            return _stream(state, req, rid)
        (gen, future), = _submit(state, req)
        result = await _wait(gen, future)
        state.metrics.count_tokens(result.prompt_tokens, result.completion_tokens)
        response.headers["X-Locft-Version"] = str(result.version.id)
        return oa.chat_response(req, rid, result)

    # vLLM-style tokenizer endpoints, which lm-eval's `remote` tokenizer uses

    @r.get("/tokenizer_info", tags=["tokenizer"])
    def tokenizer_info() -> dict[str, Any]:
        tok = state.server.loaded.tokenizer
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
                "model_max_length": state.server.context_length, "vocab_size": state.server.vocab_size}

    @r.post("/tokenize", response_model=oa.TokenizeResponse, tags=["tokenizer"])
    def tokenize(body: oa.TokenizeRequest) -> oa.TokenizeResponse:
        if body.prompt is None:
            raise bad_request("prompt must be a string", "prompt", "invalid_type")
        if len(body.prompt) > state.serve.max_prompt_chars * 4:
            raise bad_request("prompt is too long to tokenize", "prompt", "prompt_too_long")
        special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = list(state.server.loaded.tokenizer(body.prompt, add_special_tokens=special).input_ids)
        return oa.TokenizeResponse(tokens=ids, count=len(ids), max_model_len=state.server.context_length)

    @r.post("/detokenize", response_model=oa.DetokenizeResponse, tags=["tokenizer"])
    def detokenize(body: oa.DetokenizeRequest) -> oa.DetokenizeResponse:
        vocab = state.server.vocab_size
        if body.tokens is None or not all(0 <= t < vocab for t in body.tokens):
            raise bad_request(f"tokens must be a list of token ids (0..{vocab - 1})", "tokens", "invalid_type")
        return oa.DetokenizeResponse(prompt=state.server.loaded.tokenizer.decode(body.tokens))

    return r
