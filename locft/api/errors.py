"""API errors in the shape the `openai` client parses: {"error": {message, type, param, code}}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
