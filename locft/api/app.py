"""The ASGI app (FastAPI): OpenAI-compatible endpoints, operator endpoints, the dashboard.

Every error is a JSON body in OpenAI's shape; bad input is always a 4xx (a 500 means a bug,
and its body never carries a traceback). The app is assembled here from its parts: the
routers (`openai_routes`, `operator`, `dashboard`), request bodies (`json_body`), errors
(`errors`), and one pure-ASGI middleware around it all (`guard.Guard`: the bearer token, the
body-size limit, trailing-slash paths, the access log and the request metrics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from locft import __version__
from locft.api.errors import ApiError, error_response, from_locft_error, validation_error
from locft.api.guard import Guard
from locft.api.json_body import BodyError
from locft.api.metrics import Metrics
from locft.api.watcher import PromotionWatcher
from locft.config import ServeConfig
from locft.errors import LocftError
from locft.home import Home
from locft.serving.model_server import ModelServer


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


def create_app(state: AppState) -> ASGIApp:
    from locft.api import dashboard, openai_routes, operator

    app = FastAPI(
        title="locft", version=__version__, docs_url=None, redoc_url=None,  # Swagger UI would load from a CDN
        description="Lifelong knowledge editing: OpenAI-compatible serving of the promoted version, the "
                    "operator's endpoints and the dashboard's data. With `serve.api_token` set, every path "
                    "but /health and the dashboard's static files needs `Authorization: Bearer <token>`.",
        redirect_slashes=False,
    )
    app.state.locft = state
    app.include_router(openai_routes.router(state))
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
        if isinstance(exc, BodyError):
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
