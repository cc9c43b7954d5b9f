"""The operator's dashboard: its JSON endpoints under /locft/ and its static page at /.

The page (locft/api/static: HTML, JS, CSS, inline SVG charts; nothing from a CDN) polls these
endpoints. Reads come from the store library (locft.api.views); actions go through the same
store calls as the CLI. `LiveRound` follows the running round's progress file (written by the
daemon's round worker every 2 s) and keeps its training-loss points, so that the live loss
curve starts at the round's first step, not when the page was opened.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field

from locft.api import openai_compat as oa
from locft.api import views
from locft.api.errors import ApiError, bad_request

if TYPE_CHECKING:
    from locft.api.app import AppState

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_POINTS = 4000  # live loss points kept (then thinned to every other one)


class LiveRound:
    """A thread that reads run/round-progress.json every `interval_s` and keeps the running
    round's (step, loss) points while it trains; they reset when another worker starts."""

    def __init__(self, run_dir: Path, interval_s: float = 1.0) -> None:
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.pid: int | None = None
        self.points: list[tuple[int, float]] = []
        self.total: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LiveRound:
        self._thread = threading.Thread(target=self._loop, name="locft-live-round", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def sample(self) -> dict[str, Any] | None:
        from locft.rounds.live import read_progress

        progress = read_progress(self.run_dir)
        with self._lock:
            if progress is None:
                return None
            if progress.get("pid") != self.pid:
                self.pid, self.points, self.total = progress.get("pid"), [], None
            done, loss = progress.get("done"), progress.get("loss")
            if progress.get("phase") == "train" and isinstance(done, int) and isinstance(loss, (int, float)):
                self.total = progress.get("total")
                if not self.points or done > self.points[-1][0]:
                    self.points.append((done, float(loss)))
                    if len(self.points) > MAX_POINTS:
                        self.points = self.points[::2]
            return progress

    def snapshot(self) -> tuple[list[tuple[int, float]], int | None]:
        with self._lock:
            return list(self.points), self.total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a courtesy thread must outlive surprises
                log.debug("live round sampling failed", exc_info=True)


class RetractBody(oa.StrictModel):
    reason: str | None = None
    author: str | None = None


class EditBody(oa.StrictModel):
    answer: str | None = None
    prompt: str | None = None
    note: str | None = Field(None, description="why, for the audit log")
    author: str | None = None


def _id(ident: str, what: str) -> int:
    if not (ident.isascii() and ident.isdigit()) or len(ident) > 18:
        raise ApiError(404, f"no {what} {ident!r}", code="not_found")
    return int(ident)


def router(state: AppState) -> APIRouter:
    from locft.api.json_body import JsonRoute
    from locft.api.operator import served, version_brief

    r = APIRouter(route_class=JsonRoute, tags=["dashboard"])
    store = state.store
    trained_cache: dict[int, dict[int, int]] = {}

    @r.get("/locft/live", summary="The running round: phase, progress, loss points so far")
    def live() -> dict[str, Any]:
        progress = state.live.sample() if state.live is not None else None
        running = store.running_rounds()
        points, total = state.live.snapshot() if state.live is not None else ([], None)
        return {"running": running[0].to_dict() if running else None, "progress": progress,
                "loss_points": views.downsample(points, 600) if progress else [], "train_steps": total,
                "served_version": state.server.active.id, "promoted_version": store.promoted_version().id}

    @r.get("/locft/rounds", summary="Rounds, newest first, with their gate checks and capability deltas")
    def rounds(limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        return {"object": "list", "data": views.rounds(store, limit)}

    @r.get("/locft/rounds/{ident}", summary="One round: timings, loss per epoch, its candidate's metrics")
    def round_one(ident: str) -> dict[str, Any]:
        return views.round_one(store, _id(ident, "round"))

    @r.get("/locft/versions/{ident}/facts", summary="The facts a version was trained on, and which it answers")
    def version_facts(ident: str) -> dict[str, Any]:
        return views.version_facts(store, _id(ident, "version"))

    @r.get("/locft/facts", summary="Facts: search, status, the versions that know them")
    def facts(status: str = "active", search: str | None = Query(None, max_length=500),
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=10**9)) -> dict[str, Any]:
        if status not in ("active", "pending", "retracted", "all"):
            raise bad_request("status must be active, pending, retracted or all", "status", "invalid_value")
        return views.facts(store, status, search, limit, offset, cache=trained_cache)  # type: ignore[arg-type]  # checked above

    @r.get("/locft/facts/{ident}", summary="One fact and its revisions")
    def fact_one(ident: str) -> dict[str, Any]:
        return store.get_fact(_id(ident, "fact")).to_dict()

    @r.post("/locft/facts/{ident}/retract", summary="Retract a fact (the next round forgets it)")
    def retract(ident: str, body: RetractBody | None = Body(None)) -> dict[str, Any]:
        body = body or RetractBody()
        return store.retract_fact(_id(ident, "fact"), author=body.author or "dashboard", reason=body.reason).to_dict()

    @r.post("/locft/facts/{ident}/revise", summary="A new revision of a fact (answer and/or prompt)")
    def revise(ident: str, body: EditBody) -> dict[str, Any]:
        changes = {k: v for k, v in (("answer", body.answer), ("prompt", body.prompt)) if v is not None}
        if not changes:
            raise bad_request("give answer and/or prompt", "answer", "missing")
        result = store.revise_fact(_id(ident, "fact"), author=body.author or "dashboard", note=body.note, **changes)
        return {"changed": result.changed, "revision": result.revision.to_dict()}

    @r.get("/locft/overview", summary="What the dashboard's header shows")
    def overview() -> dict[str, Any]:
        from locft.home import read_daemon_info

        summary = store.summary()
        daemon = read_daemon_info(state.home)
        return {"served": served(state), "promoted": version_brief(summary.promoted),
                "facts": {"active": summary.facts.active, "pending": summary.facts.pending,
                          "retracted": summary.facts.retracted},
                "versions": summary.versions, "open_round_requests": summary.open_requests,
                "daemon": None if daemon is None else {"pid": daemon.pid, "started_at": daemon.started_at,
                                                       "next_round_at": daemon.next_round_at},
                "history": [p.to_dict() for p in store.promotion_history()[-50:]],
                "token_required": bool(state.serve.api_token), "now": time.time()}

    return r


def mount_static(app: FastAPI) -> None:
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")
