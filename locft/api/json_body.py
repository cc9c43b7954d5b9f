"""Request bodies: JSON whatever the Content-Type, no lone surrogates, our errors.

Routes built with `json_router()` (or `JsonRoute`) have FastAPI read their body through
`parse_json`; an error while reading it surfaces as `BodyError`, which the app's handler
turns back into the ApiError (FastAPI re-raises only HTTPExceptions as they are).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from locft.api import openai_compat as oa
from locft.api.errors import ApiError, bad_request


class BodyError(StarletteHTTPException):
    """An ApiError raised while FastAPI reads the body (it re-raises only HTTPExceptions as they are)."""

    def __init__(self, err: ApiError) -> None:
        super().__init__(err.status, err.message)
        self.err = err


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
                raise BodyError(err) from None
        return self._json


class JsonRoute(APIRoute):
    """Routes whose body FastAPI parses with `parse_json` (our errors, our surrogate rule)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return route


def json_router() -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {400: {"model": oa.ErrorResponse}, 401: {"model": oa.ErrorResponse}}
    return APIRouter(route_class=JsonRoute, responses=errors)
