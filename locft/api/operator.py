"""Operator endpoints: /health, /locft/status, versions, facts, rounds, promote, rollback, ask.

Everything goes through the store library, like the CLI; a promote or rollback makes the
watcher swap before it answers, so the response already names what is served.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Query, Response
from pydantic import Field

from locft.api import openai_compat as oa
from locft.api.errors import ApiError, bad_request
from locft.home import read_daemon_info

if TYPE_CHECKING:
    from locft.api.app import AppState


class _Body(oa.StrictModel):
    author: str | None = Field(None, description="who, for the audit log (default: api)")


class FactBody(_Body):
    prompt: str
    answer: str
    subject: str | None = None
    paraphrases: list[str] = []
    probes: list[str | ProbeBody] = []
    tags: list[str] = []
    source: str | None = None
    replace: bool = False


class ProbeBody(oa.StrictModel):
    prompt: str
    answer: str | None = None


FactBody.model_rebuild()


class RoundBody(_Body):
    reason: str | None = None


VersionRef = int | str


class PromoteBody(_Body):
    version: VersionRef | None = Field(None, description="a version id (or 'locft-v<N>')")
    force: bool = False
    reason: str | None = None


class RollbackBody(_Body):
    to: VersionRef | None = None
    reason: str | None = None


class AskBody(oa.StrictModel):
    prompt: str | None = None
    version: VersionRef | None = None
    chat: bool | None = None
    max_tokens: int | None = Field(None, ge=1, le=oa.MAX_TOKENS_CEILING)
    compare: bool = False


def version_ref(value: VersionRef | None, name: str, required: bool) -> int | None:
    if value is None:
        if required:
            raise bad_request(f"{name} (a version id) is required", name, "missing")
        return None
    if isinstance(value, str) and value.startswith("locft-v"):
        value = value[len("locft-v"):]
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not '²', which int() refuses
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a version id", name, "invalid_type")
    return value


def served(state: AppState) -> dict[str, Any]:
    server = state.server
    active = server.active
    return {
        "version": active.id, "model": active.name, "system_fingerprint": active.fingerprint,
        "prompt_format": active.prompt_format,
        "since": datetime.fromtimestamp(active.loaded_at, timezone.utc).isoformat(timespec="seconds"),
        "loaded_versions": server.loaded_versions(), "queue": server.queue_length(),
        "batches_run": server.batches_run, "requests_run": server.requests_run,
        "max_batch_seen": server.max_batch_seen, "tokens_generated": server.tokens_generated,
        "busy_s": round(server.busy_s, 3), "torch_threads": _torch_threads(),
        "swap_error": state.watcher.last_error if state.watcher else None,
        "base_model": server.loaded.source, "started_at": state.started_at,
    }


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def version_brief(v: Any) -> dict[str, Any]:
    """A version without its (large) gate report: id, state, facts, snapshot, gate verdict."""
    d = v.to_dict()
    gate = d.pop("gate")
    d["gate"] = None if gate is None else {"passed": gate["passed"], "metrics": gate["metrics"],
                                           "reasons": (gate.get("report") or {}).get("reasons"),
                                           "created_at": gate["created_at"]}
    return d


def after_move(state: AppState, move: Any) -> dict[str, Any]:
    if state.watcher is not None:
        state.watcher.check()  # swap now, so the response already describes what is served
    return move.to_dict() | {"served_version": state.server.active.id,
                             "swap_error": state.watcher.last_error if state.watcher else None}


def router(state: AppState) -> APIRouter:
    from locft.api.json_body import json_router

    r = json_router()
    store = state.store

    @r.get("/health", tags=["operator"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": state.server.active.id}

    @r.get("/locft/status", tags=["operator"])
    def status() -> dict[str, Any]:
        summary = store.summary().to_dict()
        summary["promoted"] = version_brief(store.promoted_version())
        data: dict[str, Any] = {"served": served(state), **summary}
        daemon = read_daemon_info(state.home)
        data["next_round_at"] = daemon.next_round_at if daemon else None
        if state.status_extra is not None:
            data.update(state.status_extra())
        return data

    @r.get("/locft/versions", tags=["operator"])
    def versions(wanted: str | None = Query(None, alias="state",
                                               description="candidate, promoted, rejected or retired")
                 ) -> dict[str, Any]:
        if wanted is not None and wanted not in ("candidate", "promoted", "rejected", "retired"):
            raise bad_request("state must be candidate, promoted, rejected or retired", "state")
        return {"object": "list", "data": [version_brief(v) for v in store.list_versions(state=wanted)]}

    @r.get("/locft/versions/{ident}", tags=["operator"])
    def version_one(ident: str) -> dict[str, Any]:
        if not (ident.isascii() and ident.isdigit()):  # '²'.isdigit() is True too
            raise ApiError(404, f"no version {ident!r}", code="not_found")
        return store.get_version(int(ident)).to_dict()

    @r.post("/locft/facts", status_code=201, tags=["operator"])
    def add_fact(body: FactBody, response: Response) -> dict[str, Any]:
        from locft.facts import EditFact, Probe

        probes = [Probe(p) if isinstance(p, str) else Probe(p.prompt, p.answer) for p in body.probes]
        fact = EditFact(body.prompt, body.answer, subject=body.subject, paraphrases=tuple(body.paraphrases),
                        probes=tuple(probes))
        result = store.add_fact(fact, source=body.source or "api", tags=body.tags, author=body.author or "api",
                                replace=body.replace)
        if result.status == "duplicate":
            response.status_code = 200
        return result.to_dict()

    @r.post("/locft/rounds", status_code=202, tags=["operator"])
    def request_round(body: RoundBody | None = Body(None)) -> dict[str, Any]:
        body = body or RoundBody()
        return store.request_round(actor=body.author or "api", reason=body.reason).to_dict()

    @r.post("/locft/promote", tags=["operator"])
    def promote(body: PromoteBody) -> dict[str, Any]:
        version = version_ref(body.version, "version", True)
        assert version is not None
        move = store.promote(version, force=body.force, actor=body.author or "api", reason=body.reason)
        return after_move(state, move)

    @r.post("/locft/rollback", tags=["operator"])
    def rollback(body: RollbackBody | None = Body(None)) -> dict[str, Any]:
        body = body or RollbackBody()
        move = store.rollback(version_ref(body.to, "to", False), actor=body.author or "api", reason=body.reason)
        return after_move(state, move)

    @r.post("/locft/ask", tags=["operator"])
    def ask(body: AskBody) -> dict[str, Any]:
        """What `locft ask` calls: the server picks the prompt format of the version (or `chat`)."""
        if body.prompt is None:
            raise bad_request("prompt is required", "prompt", "missing")
        if not body.prompt.strip():
            raise bad_request("prompt must not be empty", "prompt", "invalid_value")
        if len(body.prompt) > state.serve.max_prompt_chars:
            raise bad_request("prompt is too long", "prompt", "prompt_too_long")
        version = version_ref(body.version, "version", False)
        limit = state.serve.max_tokens_limit
        max_tokens = 32 if body.max_tokens is None else body.max_tokens
        if max_tokens > limit:
            raise bad_request(f"max_tokens must be between 1 and {limit}, got {max_tokens}", "max_tokens",
                              "out_of_range")
        server = state.server
        answer = server.ask(body.prompt, version_id=version, chat=body.chat, max_tokens=max_tokens)
        out = answer.to_dict()
        if body.compare:
            out["base"] = server.ask(body.prompt, version_id=0, chat=answer.prompt_format == "chat",
                                     max_tokens=max_tokens).to_dict()
        return out

    return r

