"""The ASGI app (FastAPI): OpenAI-compatible endpoints, operator endpoints, the dashboard.

Every error is a JSON body in OpenAI's shape; bad input is always a 4xx (a 500 means a bug,
and its body never carries a traceback). One pure-ASGI middleware (`_Guard`) does what must
happen before routing: the bearer token, the body-size limit, trailing-slash paths, the
access log and the request metrics. Generation happens on the ModelServer's single worker
thread, which batches concurrent requests; handlers await its futures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
import time
from concurrent.futures import Future
from email.message import Message
from typing import Any, AsyncIterator, Callable, Mapping

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message as AsgiMessage, Receive, Scope, Send

from locft import __version__
from locft.api import openai_compat as oa
from locft.api.errors import ApiError, bad_request, from_locft_error
from locft.api.metrics import Metrics
from locft.api.openai_compat import request_id
from locft.api.watcher import PromotionWatcher
from locft.config import ServeConfig
from locft.errors import LocftError, NotFoundError
from locft.home import Home
from locft.serving.generation import GenerationRequest, GenerationResult
from locft.serving.model_server import ModelServer
from locft.serving.served_version import ServingError, model_name

log = logging.getLogger("locft.api.server")
access_log = logging.getLogger("locft.api.access")

REQUEST_TIMEOUT_S = 600.0  # a generation that has not finished by then is reported as 504
# Paths that never need the token: liveness (load balancers), and the dashboard's static shell
# (HTML/JS/CSS shipped in the package, no data: the page asks for the token to read anything).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/",)


@dataclasses.dataclass
class AppState:
    server: ModelServer
    store: Any  # locft.store.Store
    serve: ServeConfig
    home: Home
    watcher: PromotionWatcher | None
    status_extra: Callable[[], Mapping[str, Any]] | None
    started_at: str
    max_body_bytes: int
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    live: Any = None  # locft.api.dashboard.LiveRound: the running round's loss points


# ---- errors ------------------------------------------------------------------------------------


def error_response(err: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if err.status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=extra)


class _BodyError(StarletteHTTPException):
    """An ApiError raised while FastAPI reads the body (it re-raises only HTTPExceptions as they are)."""

    def __init__(self, err: ApiError) -> None:
        super().__init__(err.status, err.message)
        self.err = err


def _validation_code(kind: str) -> str:
    if kind == "missing":
        return "missing"
    if kind.startswith(("greater_than", "less_than", "too_long", "too_short", "finite_number")):
        return "out_of_range"
    if kind.endswith(("_type", "_parsing")) or kind in ("model_attributes_type", "union_tag_invalid"):
        return "invalid_type"
    return "invalid_value"


def _param(loc: tuple[Any, ...]) -> str | None:
    """`messages[0].role` from pydantic's ("body", "messages", 0, "role"); a union's branch
    names ("str", "list[int]") are left out."""
    out = ""
    for part in loc[1:]:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "dict", "list", "none", "function-after"):
            continue
        else:
            out += ("." if out else "") + part
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = list(exc.errors())
    first = errors[0] if errors else {"type": "invalid", "loc": ("body",), "msg": "invalid request"}
    kind, loc = str(first.get("type")), tuple(first.get("loc") or ("body",))
    if kind == "json_invalid":
        return bad_request("the body is not valid JSON", code="invalid_json")
    param = _param(loc)
    where = loc[0] if loc else "body"
    if param is None and where == "body":
        if kind == "missing":
            return bad_request("a JSON object body is required", code="missing_body")
        return bad_request("the body must be a JSON object", code="invalid_type")
    name = param or str(where)
    value = first.get("input")
    shown = f", got {value!r}" if isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) < 40) else ""
    if kind == "missing":
        message = f"{name} is required"
    else:
        message = f"{name}: {first.get('msg', 'invalid value')}{shown}"
    return bad_request(message, name, _validation_code(kind))


# ---- the body: JSON whatever the Content-Type, no lone surrogates -------------------------------

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(data: Any) -> bool:
    """Any string (key or value) in parsed JSON holding a lone surrogate; iterative (deep JSON)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def parse_json(raw: bytes) -> Any:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        # JSON lets "\ud800" through, but it is not text: the tokenizer, the store and the
        # UTF-8 response would each fail on it differently
        raise bad_request("the body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                          "valid text", code="invalid_json")
    return data


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except ApiError as err:
                raise _BodyError(err) from None
        return self._json


class JsonRoute(APIRoute):
    """Routes whose body FastAPI parses with `parse_json` (our errors, our surrogate rule)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return route


# ---- the guard: token, body limit, access log, metrics -------------------------------------------


class _TooLarge(Exception):
    pass


def authorized(headers: Mapping[str, str], token: str | None) -> bool:
    if not token:
        return True
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8", "replace"),
                                                             token.encode())


async def _send_error(send: Send, err: ApiError, close: bool = False) -> None:
    response = error_response(err, {"Connection": "close"} if close else None)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class Guard:
    """Pure ASGI (no per-request task as in BaseHTTPMiddleware: it is on every token's path)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"].rstrip("/") or "/"  # /v1/models/ is /v1/models, as it always was
        scope["path"] = path
        method = scope["method"]
        status = 0

        async def sending(message: AsgiMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
                # never routed: the routes' regexes end in `$`, which also matches before a final
                # newline, so "/health\n" would be /health and "/\n" the dashboard
                await _send_error(sending, ApiError(404, f"no such path: {path!r}", code="not_found"))
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES) and \
                    not authorized(headers, self.state.serve.api_token):
                await _send_error(sending, ApiError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                                         "<serve.api_token>'", code="invalid_api_key"))
                return
            if method in ("POST", "PUT", "PATCH"):
                receive = await self._limit_body(scope, headers, receive, sending)
                if receive is None:
                    return
            await self.app(scope, receive, sending)
        except _TooLarge:
            if not status:
                await _send_error(sending, ApiError(413, f"the request body is over the limit of "
                                                         f"{self.state.max_body_bytes} bytes"), close=True)
        except (ConnectionError, OSError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 - a bug: log it, never show the client a traceback
            log.exception("internal error on %s %s", method, path)
            if not status:
                await _send_error(sending, ApiError(500, "internal server error (see the server log)",
                                                    code="internal_error"))
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or ("/ui" if path.startswith("/ui/") else "unmatched")
            self.state.metrics.observe(method, template, status, seconds)
            client = scope.get("client")
            access_log.info('%s "%s %s" %d %.1f ms', f"{client[0]}:{client[1]}" if client else "-", method,
                            path, status, seconds * 1000)

    async def _limit_body(self, scope: Scope, headers: Mapping[str, str], receive: Receive,
                          send: Send) -> Receive | None:
        limit = self.state.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= 16 * limit:
                # Read and drop a moderately oversized body, so that a client still sending it
                # gets to read the 413 instead of a broken pipe; a huge one is cut off instead.
                while (await receive()).get("more_body"):
                    pass
            await _send_error(send, ApiError(413, f"request body of {declared} bytes is over the limit of {limit}"),
                              close=True)
            return None
        # Bodies are JSON whatever Content-Type says (`curl -d` sends form-urlencoded): FastAPI
        # parses JSON only for a JSON content type.
        ctype = headers.get("content-type")
        if ctype is not None:
            msg = Message()
            msg["content-type"] = ctype
            if msg.get_content_type() != "application/json":
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"] + [
                    (b"content-type", b"application/json")]
        seen = 0

        async def counted() -> AsgiMessage:  # chunked bodies have no Content-Length to check first
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        return counted


# ---- the app -------------------------------------------------------------------------------------


def create_app(state: AppState) -> ASGIApp:
    from locft.api import dashboard, operator

    app = FastAPI(
        title="locft", version=__version__, docs_url=None, redoc_url=None,  # Swagger UI would load from a CDN
        description="Lifelong knowledge editing: OpenAI-compatible serving of the promoted version, the "
                    "operator's endpoints and the dashboard's data. With `serve.api_token` set, every path "
                    "but /health and the dashboard's static files needs `Authorization: Bearer <token>`.",
        redirect_slashes=False,
    )
    app.state.locft = state
    app.include_router(_openai_router(state))
    app.include_router(operator.router(state))
    app.include_router(dashboard.router(state))
    dashboard.mount_static(app)

    @app.get("/metrics", tags=["operator"], response_class=PlainTextResponse,
             summary="Prometheus metrics: requests, latency, tokens, served version, round phase")
    def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(LocftError)
    async def _locft_error(request: Request, exc: LocftError) -> JSONResponse:
        return error_response(from_locft_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, _BodyError):
            return error_response(exc.err)
        path = request.url.path
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return error_response(ApiError(405, f"{request.method} is not allowed on {path}"
                                                + (f"; use {allowed}" if allowed else ""), code="method_not_allowed"),
                                  {"Allow": allowed} if allowed else None)
        if exc.status_code == 404:
            return error_response(ApiError(404, f"no endpoint {path}; see /v1/models, /v1/completions, "
                                                "/v1/chat/completions, /locft/status, /openapi.json", code="not_found"))
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    state.metrics.attach(state)
    return Guard(app, state)


def json_router() -> APIRouter:
    return APIRouter(route_class=JsonRoute, responses={400: {"model": oa.ErrorResponse}, 401: {"model": oa.ErrorResponse}})


# ---- OpenAI-compatible -------------------------------------------------------------------------


async def _wait(gen: GenerationRequest, future: "Future[GenerationResult]") -> GenerationResult:
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), REQUEST_TIMEOUT_S)
    except (TimeoutError, asyncio.TimeoutError):
        gen.cancelled.set()
        raise ApiError(504, f"the generation did not finish within {REQUEST_TIMEOUT_S:.0f} s", code="timeout") from None


def _submit(state: AppState, req: oa.Completion, on_delta: list[Callable[[str], None]] | None = None
            ) -> list[tuple[GenerationRequest, "Future[GenerationResult]"]]:
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
    return f"data: {text}\n\n".encode("utf-8")


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

    callbacks = [(lambda piece, i=i: put(("delta", i, piece))) for i in range(len(req.prompts))]
    jobs = _submit(state, req, callbacks)  # errors before this point are ordinary JSON errors
    for i, (_, future) in enumerate(jobs):
        future.add_done_callback(lambda f, i=i: put(("done", i, f)))
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


def _openai_router(state: AppState) -> APIRouter:
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
