"""The HTTP server: stdlib ThreadingHTTPServer, OpenAI-compatible and operator endpoints.

One thread per connection parses and validates; generation happens on the ModelServer's single
worker thread, which batches concurrent requests. Every error is a JSON body in OpenAI's shape;
bad input is always a 4xx (a 500 means a bug, and its body never carries a traceback).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import queue
import re
import socket
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

from locft import __version__
from locft.api import openai_compat as oa
from locft.api.errors import ApiError, bad_request, from_locft_error
from locft.api.watcher import DEFAULT_INTERVAL_S, PromotionWatcher
from locft.config import LocftConfig, ServeConfig, load_config
from locft.errors import ConfigError, LocftError, NotFoundError, SnapshotError
from locft.home import Home, read_daemon_info
from locft.serving import GenerationRequest, GenerationResult, ModelServer, ServingError, load_server, model_name, request_id

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_TIMEOUT_S = 600.0  # a generation that has not finished by then is reported as 504
OPEN_PATHS = frozenset({"/health"})  # the only path that never needs the token (load balancers)


@dataclasses.dataclass
class _App:
    server: ModelServer
    store: Any  # locft.store.Store
    serve: ServeConfig
    home: Home
    watcher: PromotionWatcher | None
    status_extra: Callable[[], Mapping[str, Any]] | None
    started_at: str
    max_body_bytes: int


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    request_queue_size = 128
    app: _App


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class ApiServer:
    """A running API server (returned by `start_api_server`). `url` is the base address
    (http://host:port); OpenAI clients take `url + "/v1"`."""

    def __init__(self, httpd: _HTTPServer, app: _App, owned_store: bool, owned_model: bool) -> None:
        self._httpd = httpd
        self.app = app
        self._owned_store = owned_store
        self._owned_model = owned_model
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="locft-api", daemon=True)
        self._closed = False

    @property
    def model_server(self) -> ModelServer:
        return self.app.server

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def _start(self) -> "ApiServer":
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until `shutdown()` (from another thread or a signal handler)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def shutdown(self) -> None:
        """Stop accepting, stop the watcher, finish queued generations, release what we opened."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        if self.app.watcher is not None:
            self.app.watcher.stop()
        if self._owned_model:
            self.app.server.close()
        if self._owned_store:
            self.app.store.close()
        log.info("API server on %s stopped", self.url)

    def __enter__(self) -> "ApiServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def start_api_server(
    home: Home | Path | str | None = None,
    config: LocftConfig | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    store: Any = None,
    model_server: ModelServer | None = None,
    loaded: Any = None,
    watch: bool = True,
    poll_s: float = DEFAULT_INTERVAL_S,
    status_extra: Callable[[], Mapping[str, Any]] | None = None,
) -> ApiServer:
    """Load the base model, serve the promoted version, listen, and return at once.

    `host`/`port` override `[serve]` (port 0: an ephemeral port, see `.url`); a non-loopback host
    needs `serve.api_token`. `store`/`model_server`/`loaded` reuse what the caller already has
    (then the caller closes them). `watch`: hot-swap when the promoted pointer moves (polled
    every `poll_s`). `status_extra()` adds fields to GET /locft/status (the daemon: next round).
    """
    from locft.store import Store

    h = home if isinstance(home, Home) else Home.resolve(home)
    config = config or load_config(h.root)
    serve = config.serve
    if host is not None and host != serve.host:
        try:
            serve = dataclasses.replace(serve, host=host)  # re-runs the "non-loopback needs a token" check
        except ConfigError as exc:
            raise ConfigError(f"--host {host}: {exc}") from None
    listen_port = serve.port if port is None else port
    owned_store = store is None
    if store is None:
        store = Store.open(h, config.store)
    owned_model = model_server is None
    try:
        if model_server is None:
            model_server = _serve_what_can_be_served(h, store, config, loaded)
        cls = _HTTPServer6 if ":" in serve.host else _HTTPServer
        try:
            httpd = cls((serve.host, listen_port), _Handler)
        except OSError as exc:
            raise ServingError(f"cannot listen on {serve.host}:{listen_port}: {exc.strerror or exc}; "
                               "choose another [serve] port (or --port)") from None
    except BaseException:
        if owned_model and model_server is not None:
            model_server.close()
        if owned_store:
            store.close()
        raise
    watcher = PromotionWatcher(store, model_server, poll_s).start() if watch else None
    httpd.app = _App(
        server=model_server, store=store, serve=serve, home=h, watcher=watcher, status_extra=status_extra,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        max_body_bytes=max(1 << 20, serve.max_prompt_chars * 16 + (64 << 10)),
    )
    api = ApiServer(httpd, httpd.app, owned_store, owned_model)._start()
    log.info("API server listening on %s (serving %s)", api.url, model_server.active.name)
    return api


def _serve_what_can_be_served(home: Home, store: Any, config: LocftConfig, loaded: Any) -> ModelServer:
    """A started ModelServer on the promoted version; when that version cannot be served (its
    snapshot corrupted or gone, or built on another base model), on version 0 instead, so that
    the server still starts: operator endpoints (rollback), other versions and the rounds of a
    daemon keep working, /locft/status says why, and the watcher swaps as soon as the pointer
    moves to a version that loads. A running server keeps the version it has in that case."""
    from locft.engine.model_io import load_base

    if loaded is None:
        loaded = load_base(config.model, home.root)
    try:
        return load_server(store=store, config=config, loaded=loaded)
    except SnapshotError as exc:
        log.error("the promoted version cannot be served: %s; serving version 0 (the base model) until a "
                  "version that loads is promoted (`locft rollback` or a new round)", exc)
        return load_server(store=store, config=config, loaded=loaded, version_id=0)


# ---------------------------------------------------------------------------------------------
# request handling


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"locft/{__version__}"
    timeout = 120  # seconds a client may stay silent mid-request

    # ---- plumbing -------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    @property
    def app(self) -> _App:
        return self.server.app

    def _send_json(self, status: int, data: Any, headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(self, err: ApiError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        try:
            self._send_json(err.status, err.body(), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (a malformed request line, a URI over 64 KiB, too many header
        lines, an unknown method) in the same JSON shape as every other error, not as HTML."""
        self.close_connection = True
        text = message or (self.responses.get(code, ("error",))[0])
        try:
            self._send_json(code, ApiError(code, f"{text}" + (f": {explain}" if explain else "")).body())
        except OSError:
            pass

    def _read_body(self) -> bytes | None:
        """The raw body (always read, so a keep-alive connection stays in sync), size-checked."""
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length (chunked request bodies are not supported)")
        if length_header is None:
            return None
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise bad_request("invalid Content-Length header") from None
        if length < 0 or length > self.app.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            if 0 < length <= 16 * self.app.max_body_bytes:
                # Read and drop a moderately oversized body, so that a client still sending it
                # gets to read the 413 instead of a broken pipe; a huge one is cut off instead.
                remaining = length
                while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 16))):
                    remaining -= len(chunk)
            raise ApiError(413, f"request body of {length} bytes is over the limit of {self.app.max_body_bytes}")
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _parse_json(raw: bytes | None) -> Any:
        if not raw:
            return None
        try:
            text = raw.decode("utf-8")
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}", code="invalid_json") from None
        if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
            # JSON lets "\ud800" through, but it is not text: the tokenizer, the store and the
            # UTF-8 response would each fail on it differently
            raise bad_request("the body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                              "valid text", code="invalid_json")
        return data

    def _authorized(self) -> bool:
        token = self.app.serve.api_token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def _dispatch(self, method: str) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            raw = self._read_body() if method in ("POST", "PUT", "PATCH") else None
            if path not in OPEN_PATHS and not self._authorized():
                raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <serve.api_token>'",
                               code="invalid_api_key")
            route = _route(method, path)
            body = self._parse_json(raw)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            route(self, body, query)
        except ApiError as err:
            self._send_error(err)
        except LocftError as exc:
            self._send_error(from_locft_error(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - a bug: log it, never show the client a traceback
            log.exception("internal error on %s %s", method, path)
            self._send_error(ApiError(500, "internal server error (see the server log)", code="internal_error"))
        finally:
            log.debug("%s %s %.1f ms", method, path, (time.perf_counter() - started) * 1000)

    # ---- SSE ------------------------------------------------------------------------------

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the end of the stream is the end of the connection
        self.end_headers()
        self.close_connection = True

    def _sse(self, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        self.wfile.write(f"data: {text}\n\n".encode("utf-8"))
        self.wfile.flush()


Route = Callable[[_Handler, Any, dict[str, str]], None]
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


def _object(body: Any) -> dict[str, Any]:
    if body is None:
        raise bad_request("a JSON object body is required", code="missing_body")
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", code="invalid_type")
    return body


def _wait(future: "Future[GenerationResult]") -> GenerationResult:
    try:
        return future.result(REQUEST_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(504, f"the generation did not finish within {REQUEST_TIMEOUT_S:.0f} s", code="timeout") from None


def _submit(h: _Handler, req: oa.Completion, on_delta: list[Callable[[str], None]] | None = None) -> list[tuple[GenerationRequest, Future[GenerationResult]]]:
    app = h.app
    if app.server.queue_length() >= app.server.max_queue:
        raise ApiError(503, "the server is busy; retry shortly", code="overloaded")
    try:  # fixed now: hot swaps after this do not affect this request
        version = app.server.version(req.version_id)
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
            out.append((gen, app.server.submit(gen)))
        except BaseException:
            for g, _ in out:
                g.cancelled.set()
            raise
    return out


def _prompt_texts(h: _Handler, req: oa.Completion) -> list[str]:
    tok = h.app.server.loaded.tokenizer
    return [t if t else str(tok.decode(ids)) for t, ids in zip(req.prompt_texts, req.prompts)]


def _completions(h: _Handler, body: Any, query: dict[str, str]) -> None:
    app = h.app
    req = oa.parse_completion(_object(body), app.server.loaded.tokenizer, app.serve.max_prompt_chars,
                              app.serve.max_tokens_limit)
    for ids in req.prompts:
        _check(h, ids, req.max_tokens)
    rid = request_id("cmpl")
    if req.stream:
        _stream(h, req, rid)
        return
    jobs = _submit(h, req)
    results = [_wait(f) for _, f in jobs]
    texts = _prompt_texts(h, req) if req.echo else [""] * len(results)
    h._send_json(200, oa.completion_response(req, rid, results, texts),
                 {"X-Locft-Version": str(results[0].version.id)})


def _chat(h: _Handler, body: Any, query: dict[str, str]) -> None:
    app = h.app
    req = oa.parse_chat(_object(body), app.server.loaded.tokenizer, app.serve.max_prompt_chars,
                        app.serve.max_tokens_limit)
    _check(h, req.prompts[0], req.max_tokens)
    rid = request_id("chatcmpl")
    if req.stream:
        _stream(h, req, rid)
        return
    (_, future), = _submit(h, req)
    result = _wait(future)
    h._send_json(200, oa.chat_response(req, rid, result), {"X-Locft-Version": str(result.version.id)})


def _check(h: _Handler, ids: list[int], max_tokens: int) -> None:
    try:
        h.app.server.check_request(GenerationRequest(ids, max_tokens=max_tokens))
    except ServingError as exc:
        raise bad_request(str(exc), "prompt", "context_length_exceeded") from None


def _stream(h: _Handler, req: oa.Completion, rid: str) -> None:
    """Server-sent events: one chunk per new piece of text, per choice; then usage (if asked) and
    [DONE]. The worker thread only puts pieces on a queue; this thread writes them."""
    events: queue.Queue[tuple[str, int, Any]] = queue.Queue()
    callbacks = [(lambda piece, i=i: events.put(("delta", i, piece))) for i in range(len(req.prompts))]
    jobs = _submit(h, req, callbacks)  # errors before this point are ordinary JSON errors
    for i, (_, future) in enumerate(jobs):
        future.add_done_callback(lambda f, i=i: events.put(("done", i, f)))
    version = h.app.server.version(jobs[0][0].version_id)
    created = int(time.time())
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    results: dict[int, GenerationResult] = {}
    try:
        h._start_sse()
        if req.chat:
            h._sse(oa.chat_chunk(rid, created, version, {"role": "assistant", "content": ""}, None))
        elif req.echo:
            for i, text in enumerate(_prompt_texts(h, req)):
                h._sse(oa.completion_chunk(rid, created, version, i, text, None))
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while len(results) < len(jobs):
            try:
                what, i, value = events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise ApiError(504, "the generation did not finish in time", code="timeout") from None
            if what == "delta":
                if req.chat:
                    h._sse(oa.chat_chunk(rid, created, version, {"content": value}, None))
                else:
                    h._sse(oa.completion_chunk(rid, created, version, i, value, None))
                continue
            exc = value.exception()
            if exc is not None:
                raise exc
            results[i] = result = value.result()
            finish = "length" if result.finish_reason == "length" else "stop"
            if req.chat:
                h._sse(oa.chat_chunk(rid, created, version, {}, finish))
            else:
                h._sse(oa.completion_chunk(rid, created, version, i, "", finish))
        if req.include_usage:
            h._sse(oa.usage_chunk(kind, rid, created, version, [results[i] for i in sorted(results)]))
        h._sse("[DONE]")
    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
        log.info("stream %s: client went away (%s); cancelling", rid, type(exc).__name__)
        for gen, _ in jobs:
            gen.cancelled.set()
    except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
        for gen, _ in jobs:
            gen.cancelled.set()
        err = exc if isinstance(exc, ApiError) else (
            from_locft_error(exc) if isinstance(exc, LocftError) else ApiError(500, "internal server error"))
        if not isinstance(exc, (ApiError, LocftError)):
            log.exception("stream %s failed", rid)
        try:
            h._sse(err.body())
        except OSError:
            pass


# ---- models and tokenizer (vLLM-style endpoints, which lm-eval's `remote` tokenizer uses) --------


def _model_entry(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "locft"}


def _models(h: _Handler, body: Any, query: dict[str, str]) -> None:
    active = h.app.server.active
    data = [_model_entry("locft", int(active.loaded_at))]
    for v in h.app.store.list_versions():
        if v.snapshot_present:
            data.append(_model_entry(model_name(v.id), int(v.created_at.timestamp())) | {"locft_state": v.state})
    h._send_json(200, {"object": "list", "data": data})


def _model_one(h: _Handler, name: str) -> None:
    try:
        version_id = oa.parse_model_name(name)
    except ServingError as exc:
        raise ApiError(404, str(exc), "model", "model_not_found") from None
    if version_id is None:
        h._send_json(200, _model_entry("locft", int(h.app.server.active.loaded_at)))
        return
    v = h.app.store.get_version(version_id)
    h._send_json(200, _model_entry(model_name(v.id), int(v.created_at.timestamp())) | {"locft_state": v.state})


def _tokenizer_info(h: _Handler, body: Any, query: dict[str, str]) -> None:
    tok = h.app.server.loaded.tokenizer
    h._send_json(200, {
        "tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
        "pad_token": tok.pad_token, "chat_template": getattr(tok, "chat_template", None),
        "model_max_length": h.app.server.context_length, "vocab_size": h.app.server.vocab_size,
    })


def _tokenize(h: _Handler, body: Any, query: dict[str, str]) -> None:
    data = _object(body)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string", "prompt", "invalid_type")
    if len(prompt) > h.app.serve.max_prompt_chars * 4:
        raise bad_request("prompt is too long to tokenize", "prompt", "prompt_too_long")
    special = data.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise bad_request("add_special_tokens must be true or false", "add_special_tokens", "invalid_type")
    ids = list(h.app.server.loaded.tokenizer(prompt, add_special_tokens=special).input_ids)
    h._send_json(200, {"tokens": ids, "count": len(ids), "max_model_len": h.app.server.context_length})


def _detokenize(h: _Handler, body: Any, query: dict[str, str]) -> None:
    tokens = _object(body).get("tokens")
    vocab = h.app.server.vocab_size
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                               for t in tokens):
        raise bad_request(f"tokens must be a list of token ids (0..{vocab - 1})", "tokens", "invalid_type")
    h._send_json(200, {"prompt": h.app.server.loaded.tokenizer.decode(tokens)})


# ---- operator endpoints (through the store library, like the CLI) ------------------------------


def _health(h: _Handler, body: Any, query: dict[str, str]) -> None:
    h._send_json(200, {"status": "ok", "version": h.app.server.active.id})


def _served(app: _App) -> dict[str, Any]:
    active = app.server.active
    return {
        "version": active.id, "model": active.name, "system_fingerprint": active.fingerprint,
        "prompt_format": active.prompt_format,
        "since": datetime.fromtimestamp(active.loaded_at, timezone.utc).isoformat(timespec="seconds"),
        "loaded_versions": app.server.loaded_versions(), "queue": app.server.queue_length(),
        "batches_run": app.server.batches_run, "requests_run": app.server.requests_run,
        "max_batch_seen": app.server.max_batch_seen, "tokens_generated": app.server.tokens_generated,
        "busy_s": round(app.server.busy_s, 3), "torch_threads": _torch_threads(), "swap_error": app.watcher.last_error if app.watcher else None,
        "base_model": app.server.loaded.source, "started_at": app.started_at,
    }


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _status(h: _Handler, body: Any, query: dict[str, str]) -> None:
    app = h.app
    summary = app.store.summary().to_dict()
    summary["promoted"] = _version_brief(app.store.promoted_version())
    data: dict[str, Any] = {"served": _served(app), **summary}
    daemon = read_daemon_info(app.home)
    data["next_round_at"] = daemon.next_round_at if daemon else None
    if app.status_extra is not None:
        data.update(app.status_extra())
    h._send_json(200, data)


def _version_brief(v: Any) -> dict[str, Any]:
    """A version without its (large) gate report: id, state, facts, snapshot, gate verdict."""
    d = v.to_dict()
    gate = d.pop("gate")
    d["gate"] = None if gate is None else {"passed": gate["passed"], "metrics": gate["metrics"],
                                           "reasons": (gate.get("report") or {}).get("reasons"),
                                           "created_at": gate["created_at"]}
    return d


def _versions(h: _Handler, body: Any, query: dict[str, str]) -> None:
    state = query.get("state")
    if state is not None and state not in ("candidate", "promoted", "rejected", "retired"):
        raise bad_request("state must be candidate, promoted, rejected or retired", "state")
    versions = h.app.store.list_versions(state=state)
    h._send_json(200, {"object": "list", "data": [_version_brief(v) for v in versions]})


def _version_one(h: _Handler, ident: str) -> None:
    if not (ident.isascii() and ident.isdigit()):  # '²'.isdigit() is True too
        raise ApiError(404, f"no version {ident!r}", code="not_found")
    h._send_json(200, h.app.store.get_version(int(ident)).to_dict())


def _actor(data: Mapping[str, Any]) -> str:
    author = data.get("author")
    if author is not None and not isinstance(author, str):
        raise bad_request("author must be a string", "author", "invalid_type")
    return author or "api"


def _str_field(data: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name} is required", name, "missing")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string", name, "invalid_type")
    return value


def _add_fact(h: _Handler, body: Any, query: dict[str, str]) -> None:
    from locft.facts import EditFact, Probe

    data = _object(body)
    prompt = _str_field(data, "prompt", True)
    answer = _str_field(data, "answer", True)
    paraphrases = data.get("paraphrases") or []
    probes = data.get("probes") or []
    tags = data.get("tags") or []
    if not isinstance(paraphrases, list) or not all(isinstance(p, str) for p in paraphrases):
        raise bad_request("paraphrases must be a list of strings", "paraphrases", "invalid_type")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("tags must be a list of strings", "tags", "invalid_type")
    probe_objs = []
    for p in probes if isinstance(probes, list) else [None]:
        if isinstance(p, str):
            probe_objs.append(Probe(p))
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str) and isinstance(p.get("answer"), (str, type(None))):
            probe_objs.append(Probe(p["prompt"], p.get("answer")))
        else:
            raise bad_request("probes must be a list of prompts (or {prompt, answer})", "probes", "invalid_type")
    replace = data.get("replace", False)
    if not isinstance(replace, bool):
        raise bad_request("replace must be true or false", "replace", "invalid_type")
    fact = EditFact(prompt or "", answer or "", subject=_str_field(data, "subject"),
                    paraphrases=tuple(paraphrases), probes=tuple(probe_objs))
    result = h.app.store.add_fact(fact, source=_str_field(data, "source") or "api", tags=tags,
                                  author=_actor(data), replace=replace)
    h._send_json(201 if result.status != "duplicate" else 200, result.to_dict())


def _request_round(h: _Handler, body: Any, query: dict[str, str]) -> None:
    data = _object(body) if body is not None else {}
    info = h.app.store.request_round(actor=_actor(data), reason=_str_field(data, "reason"))
    h._send_json(202, info.to_dict())


def _version_field(data: Mapping[str, Any], name: str, required: bool) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name} (a version id) is required", name, "missing")
        return None
    if isinstance(value, str) and value.startswith("locft-v"):
        value = value[len("locft-v"):]
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not '²', which int() refuses
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a version id", name, "invalid_type")
    return value


def _after_move(h: _Handler, move: Any) -> None:
    if h.app.watcher is not None:
        h.app.watcher.check()  # swap now, so the response already describes what is served
    h._send_json(200, move.to_dict() | {"served_version": h.app.server.active.id,
                                        "swap_error": h.app.watcher.last_error if h.app.watcher else None})


def _promote(h: _Handler, body: Any, query: dict[str, str]) -> None:
    data = _object(body)
    version = _version_field(data, "version", True)
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise bad_request("force must be true or false", "force", "invalid_type")
    assert version is not None
    move = h.app.store.promote(version, force=force, actor=_actor(data), reason=_str_field(data, "reason"))
    _after_move(h, move)


def _rollback(h: _Handler, body: Any, query: dict[str, str]) -> None:
    data = _object(body) if body is not None else {}
    move = h.app.store.rollback(_version_field(data, "to", False), actor=_actor(data),
                                reason=_str_field(data, "reason"))
    _after_move(h, move)


def _ask(h: _Handler, body: Any, query: dict[str, str]) -> None:
    """What `locft ask` calls: the server picks the prompt format of the version (or `chat`)."""
    data = _object(body)
    prompt = _str_field(data, "prompt", True)
    assert prompt is not None
    if not prompt.strip():
        raise bad_request("prompt must not be empty", "prompt", "invalid_value")
    if len(prompt) > h.app.serve.max_prompt_chars:
        raise bad_request("prompt is too long", "prompt", "prompt_too_long")
    version = _version_field(data, "version", False)
    chat = data.get("chat")
    if chat is not None and not isinstance(chat, bool):
        raise bad_request("chat must be true, false or null", "chat", "invalid_type")
    max_tokens = oa._int(data, "max_tokens", 32, 1, h.app.serve.max_tokens_limit)
    assert max_tokens is not None
    compare = data.get("compare", False)
    if not isinstance(compare, bool):
        raise bad_request("compare must be true or false", "compare", "invalid_type")
    server = h.app.server
    answer = server.ask(prompt, version_id=version, chat=chat, max_tokens=max_tokens)
    out = answer.to_dict()
    if compare:
        fmt_chat = answer.prompt_format == "chat"
        out["base"] = server.ask(prompt, version_id=0, chat=fmt_chat, max_tokens=max_tokens).to_dict()
    h._send_json(200, out)


_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/health"): _health,
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/completions"): _completions,
    ("POST", "/v1/chat/completions"): _chat,
    ("GET", "/tokenizer_info"): _tokenizer_info,
    ("POST", "/tokenize"): _tokenize,
    ("POST", "/detokenize"): _detokenize,
    ("GET", "/locft/status"): _status,
    ("GET", "/locft/versions"): _versions,
    ("POST", "/locft/facts"): _add_fact,
    ("POST", "/locft/rounds"): _request_round,
    ("POST", "/locft/promote"): _promote,
    ("POST", "/locft/rollback"): _rollback,
    ("POST", "/locft/ask"): _ask,
}
_PREFIXES: dict[str, Callable[[_Handler, str], None]] = {
    "/v1/models/": _model_one,
    "/locft/versions/": _version_one,
}


def _route(method: str, path: str) -> Route:
    route = _ROUTES.get((method, path))
    if route is not None:
        return route
    if method == "GET":
        for prefix, fn in _PREFIXES.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                rest = path[len(prefix):]
                return lambda h, body, query: fn(h, rest)
    allowed = sorted(m for m, p in _ROUTES if p == path)
    if allowed or any(path.startswith(p) and len(path) > len(p) for p in _PREFIXES):
        raise ApiError(405, f"{method} is not allowed on {path}" + (f"; use {', '.join(allowed)}" if allowed else ""),
                       code="method_not_allowed")
    raise ApiError(404, f"no endpoint {path}; see /v1/models, /v1/completions, /v1/chat/completions, /locft/status",
                   code="not_found")
