"""The HTTP API: OpenAI-compatible endpoints + operator endpoints, with hot swap on promotion.

How the daemon (or anything else) runs it:

    from locft.api import start_api_server
    api = start_api_server(home, config)   # loads the base model, serves the promoted version,
                                           # listens on [serve] host:port; returns at once
    api.url                                # "http://127.0.0.1:8765": put it in run/daemon.json
    ...
    api.shutdown()                         # stop listening, stop the watcher, free the model

Hot swap needs nothing from the caller: a watcher thread polls the store's promoted pointer
(every second) and, when it moves (a round promoted a version, `locft promote`/`rollback` ran,
or POST /locft/promote|rollback), loads + verifies the new snapshot and swaps it in between
batches. `api.app.watcher.poke()` makes it look immediately (e.g. right after a round).

The app is FastAPI (locft.api.app assembles it: the routers in openai_routes, operator and
dashboard; request bodies in json_body; errors in errors; the token, body limit and access log
in guard; pydantic models in openai_compat) served by uvicorn on a thread (locft.api.server).
Endpoints (all but /health and the dashboard's static page and files need
`Authorization: Bearer <serve.api_token>` when a token is set):

    GET  /health                     liveness + served version (never needs the token)
    GET  /v1/models                  "locft" (= promoted) and "locft-v<N>" per servable version
    POST /v1/completions             raw-text completions; prompt text or token ids; echo+logprobs
    POST /v1/chat/completions        through the model's chat template; stream: true for SSE
    GET  /tokenizer_info, POST /tokenize, /detokenize    vLLM-style (lm-eval's remote tokenizer)
    GET  /locft/status               served + promoted version, facts pending, last/next round
    GET  /locft/versions[/<id>]      versions with their state and gate verdict
    POST /locft/facts                add a fact {prompt, answer, paraphrases?, probes?, replace?}
    POST /locft/rounds               request a round {reason?}
    POST /locft/promote              {version, force?, reason?};  POST /locft/rollback {to?, reason?}
    POST /locft/ask                  {prompt, version?, chat?, max_tokens?, compare?} (`locft ask`)
    GET  /                           the dashboard (locft/api/static; data from the endpoints below)
    GET  /locft/overview, /locft/live, /locft/rounds[/<id>], /locft/versions/<id>/facts
    GET  /locft/facts[/<id>]; POST /locft/facts/<id>/retract, /locft/facts/<id>/revise
    GET  /openapi.json               every endpoint and model;  GET /metrics  Prometheus text

Each request is logged at INFO on `locft.api.access` (client, method, path, status, ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from locft.api.server import ApiServer, start_api_server

__all__ = ["ApiServer", "start_api_server"]


def __getattr__(name: str) -> Any:  # lazy: `locft.api.client` must stay light (no store, no torch)
    if name in __all__:
        from locft.api import server

        return getattr(server, name)
    raise AttributeError(name)
