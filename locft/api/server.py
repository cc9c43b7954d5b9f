"""The HTTP server: the ASGI app of locft.api.app, served by uvicorn on a thread of its own.

`start_api_server` binds the socket itself (so that a port in use is an error right away, port
0 picks a free one, and IPv6 works), starts uvicorn's event loop on a thread and returns once
it accepts connections. `ApiServer.shutdown()` stops it; streams still open get a few seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from locft.api.app import AppState, create_app
from locft.api.errors import ApiError
from locft.api.watcher import DEFAULT_INTERVAL_S, PromotionWatcher
from locft.config import LocftConfig, load_config
from locft.errors import ConfigError, SnapshotError
from locft.home import Home
from locft.serving.model_server import ModelServer, load_server
from locft.serving.served_version import ServingError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACEFUL_SHUTDOWN_S = 3.0  # open streams get this long; the daemon must stop within 15 s


# A client that has begun a request (or opened a connection) and then sends nothing for this
# long is answered 408 and cut off: uvicorn itself waits for headers and bodies forever, so
# silent clients would otherwise hold their connections until the process ends.
REQUEST_READ_TIMEOUT_S = 30.0


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose refusals of unparseable requests (a malformed request
    line, a path that is not ASCII) are JSON in OpenAI's error shape like every other error, and
    which times out a client that stops sending in the middle of a request."""

    _refused = False
    _reading = False  # from a request's first byte to the end of its body
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()  # a new connection owes a request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._reading = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._reading = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._cancel_read_timer()
        self._write_error(ApiError(400, "invalid HTTP request (a malformed request line or header, or a path "
                                        "that is not ASCII)", code="invalid_http"), b"400 Bad Request")
        # Half-close and drop what the client still sends: closing with unread data would reset
        # the connection, and a client still sending (a huge request line) would lose the answer.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(10.0, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._refused:
            return
        if self._reading:
            self._arm_read_timer()
        else:
            self._cancel_read_timer()  # between requests uvicorn's keep-alive timeout applies

    def _write_error(self, err: ApiError, status_line: bytes) -> None:
        body = json.dumps(err.body()).encode()
        head = (b"HTTP/1.1 " + status_line + b"\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
        self.transport.write(head + body)

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = asyncio.get_running_loop().call_later(REQUEST_READ_TIMEOUT_S, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._refused or self.transport.is_closing():
            return
        waiting_on_client = self._reading or self.cycle is None
        if not waiting_on_client:
            return
        if self.cycle is None or not self.cycle.response_started:
            self._write_error(ApiError(408, f"the request was not received in time: nothing arrived for "
                                            f"{REQUEST_READ_TIMEOUT_S:g} s", code="request_timeout"),
                              b"408 Request Timeout")
        log.info("closed a connection from %s: a request not received within %g s",
                 f"{self.client[0]}:{self.client[1]}" if self.client else "-", REQUEST_READ_TIMEOUT_S)
        self.transport.close()  # a handler waiting for the body gets http.disconnect


class ApiServer:
    """A running API server (returned by `start_api_server`). `url` is the base address
    (http://host:port); OpenAI clients take `url + "/v1"`. `app` holds what the handlers use
    (the model server, the store, the watcher); `asgi` is the ASGI application."""

    def __init__(self, sock: socket.socket, state: AppState, owned_store: bool, owned_model: bool) -> None:
        self.app = state
        self.asgi = create_app(state)
        self._sock = sock
        self._owned_store = owned_store
        self._owned_model = owned_model
        host, port = sock.getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        config = uvicorn.Config(
            self.asgi, http=_Protocol, lifespan="off", log_config=None, access_log=False,  # ours logs at INFO
            server_header=False, date_header=False, timeout_keep_alive=30,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S), backlog=128,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="locft-api", daemon=True)
        self._closed = False
        self._error: BaseException | None = None

    @property
    def model_server(self) -> ModelServer:
        return self.app.server

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def _run(self) -> None:
        try:
            asyncio.run(self._uvicorn.serve(sockets=[self._sock]))
        except BaseException as exc:  # noqa: BLE001 - reported by _start / wait
            self._error = exc
            log.exception("the API server stopped on an error")

    def _start(self, timeout_s: float = 30.0) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.shutdown()
                raise ServingError(f"the HTTP server did not start on {self.url}: {self._error or 'timed out'}")
            time.sleep(0.01)
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
        self._uvicorn.should_exit = True
        if self._thread.is_alive():
            self._thread.join(GRACEFUL_SHUTDOWN_S + 5)
        self._sock.close()
        if self.app.live is not None:
            self.app.live.stop()
        if self.app.watcher is not None:
            self.app.watcher.stop()
        if self._owned_model:
            self.app.server.close()
        if self._owned_store:
            self.app.store.close()
        log.info("API server on %s stopped", self.url)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                           "choose another [serve] port (or --port)") from None
    return sock


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
    from locft.api.dashboard import LiveRound
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
        sock = _bind(serve.host, listen_port)
    except BaseException:
        if owned_model and model_server is not None:
            model_server.close()
        if owned_store:
            store.close()
        raise
    watcher = PromotionWatcher(store, model_server, poll_s).start() if watch else None
    state = AppState(
        server=model_server, store=store, serve=serve, home=h, watcher=watcher, status_extra=status_extra,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        max_body_bytes=max(1 << 20, serve.max_prompt_chars * 16 + (64 << 10)),
        live=LiveRound(h.run_dir).start(),
    )
    api = ApiServer(sock, state, owned_store, owned_model)._start()
    log.info("API server listening on %s (serving %s; dashboard at %s/)", api.url, model_server.active.name, api.url)
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
