"""API errors in the shape the `openai` client parses: {"error": {message, type, param, code}}.

ApiError, made from a library error (`from_locft_error`) or a request FastAPI could not
validate (`validation_error`), and sent as a JSON response (`error_response`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from locft.errors import ConflictError, InvalidFactError, LocftError, NotFoundError, SnapshotError, StoreError

# HTTP status -> OpenAI error type (what api.openai.com sends for each)
_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 411: "invalid_request_error",
    413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
    504: "server_error",
}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def from_locft_error(exc: LocftError) -> ApiError:
    """A library error as the HTTP error a client should see (never a 500: these are expected)."""
    from locft.serving.served_version import ServingError

    if isinstance(exc, NotFoundError):
        return ApiError(404, str(exc), code="not_found")
    if isinstance(exc, ConflictError):
        return ApiError(409, str(exc), code="conflict")
    if isinstance(exc, InvalidFactError):
        return ApiError(400, str(exc), code="invalid_fact")
    if isinstance(exc, SnapshotError):
        return ApiError(409, str(exc), code="version_unavailable")
    if isinstance(exc, StoreError):
        return ApiError(409, str(exc), code="store_refused")
    if isinstance(exc, ServingError):
        return ApiError(400, str(exc), code="invalid_request")
    return ApiError(400, str(exc))


# ---- as a response, and from FastAPI's validation errors -----------------------------------------


def error_response(err: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if err.status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=extra)


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
    short = isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) < 40)
    shown = f", got {value!r}" if short else ""
    if kind == "missing":
        message = f"{name} is required"
    else:
        message = f"{name}: {first.get('msg', 'invalid value')}{shown}"
    return bad_request(message, name, _validation_code(kind))
