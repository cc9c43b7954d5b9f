"""The guard: a pure-ASGI middleware for what must happen before routing.

The bearer token, the body-size limit (declared or counted while chunked bodies stream in),
bodies as JSON whatever their Content-Type, trailing-slash and control-character paths, the
access log and the request metrics; an unexpected exception is logged and answered 500
without a traceback.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from email.message import Message
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from locft.api.errors import ApiError, error_response

if TYPE_CHECKING:
    from locft.api.app import AppState

log = logging.getLogger("locft.api.server")
access_log = logging.getLogger("locft.api.access")

# Paths that never need the token: liveness (load balancers), and the dashboard's static shell
# (HTML/JS/CSS shipped in the package, no data: the page asks for the token to read anything).
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/",)


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
                limited = await self._limit_body(scope, headers, receive, sending)
                if limited is None:
                    return
                receive = limited
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
