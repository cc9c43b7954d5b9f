"""Who can reach the API: loopback only unless told otherwise, and with a token configured,
nothing but /health answers without it (every route, unknown paths included).

tests/api/test_api.py checks the token with the openai client on a few endpoints and that
start_api_server refuses 0.0.0.0 without a token; this enumerates every route the server has.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locft.api import ApiServer, start_api_server
from locft.cli.main import cli
from locft.config import load_config
from locft.errors import ConfigError
from locft.home import Home
from locft.store import Store
from tests.reliability.conftest import http, table_counts

TOKEN = "s3cret-token"


def outward_address() -> str | None:
    """This machine's address on its default route (None without one): not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent by a UDP connect
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def test_the_api_listens_on_loopback_only_by_default(api: ApiServer, served_home: Home,
                                                     figures: dict[str, Any]) -> None:
    assert load_config(served_home.root).serve.host == "127.0.0.1"
    assert api.host == "127.0.0.1" and api.url.startswith("http://127.0.0.1:")
    assert http(api, "GET", "/health")[0] == 200
    outward = outward_address()
    figures["outward address tried"] = outward or "none on this machine"
    if outward is not None:  # the same port on the machine's own network address: nobody there
        with pytest.raises(OSError) as refused:
            socket.create_connection((outward, api.port), timeout=5).close()
        assert refused.value.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, None)


def test_a_non_loopback_address_is_refused_without_a_token(served_home: Home) -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "0"],
                                env={"LOCFT_HOME": str(served_home.root)})
    assert result.exit_code != 0 and "api_token" in result.stderr, result.output  # its status: README
    config = load_config(served_home.root)
    with pytest.raises(ConfigError, match="not loopback: set serve.api_token"):
        dataclasses.replace(config.serve, host="0.0.0.0")  # what a locft.toml with host = "0.0.0.0" gets


@pytest.fixture(scope="module")
def guarded(api: ApiServer, served_home: Home) -> Any:
    """A second server on the same model, told to listen on every address, with a token."""
    config = load_config(served_home.root)
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, host="0.0.0.0", api_token=TOKEN))
    with Store.open(served_home, sweep_orphans=False) as store, \
            start_api_server(served_home, config, port=0, store=store, model_server=api.model_server,
                             watch=False) as server:
        assert server.host == "0.0.0.0"  # told to: every address
        yield SimpleNamespace(host="127.0.0.1", port=server.port, asgi=server.asgi)


# Needs no token: liveness, and the dashboard's static shell (no data; it asks for the token).
OPEN = {"/health", "/", "/ui/app.js", "/ui/style.css"}


def every_route(asgi: Any) -> list[tuple[str, str]]:
    """Every route the app has (path parameters filled with 1), read from its OpenAPI document,
    so a route added later is checked too; the dashboard's page and files; and paths and methods
    that match nothing."""
    paths = asgi.app.openapi()["paths"]  # asgi.app: the FastAPI app inside the Guard middleware
    routes = sorted((method.upper(), path.replace("{ident}", "1").replace("{name}", "locft-v1"))
                    for path, ops in paths.items() for method in ops)
    assert ("POST", "/v1/completions") in routes and ("GET", "/locft/rounds") in routes
    routes += [("GET", "/openapi.json"), ("GET", "/"), ("GET", "/ui/app.js"), ("GET", "/ui/style.css")]
    routes += [("GET", "/nowhere"), ("POST", "/v1/nowhere"), ("DELETE", "/locft/facts"), ("PUT", "/locft/rollback")]
    return routes


BODIES = {"/locft/facts": {"prompt": "Guarded?", "answer": "yes"}, "/locft/promote": {"version": 0},
          "/locft/rollback": {}, "/locft/rounds": {"reason": "no token"}}
WRONG = [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
         TOKEN, f"Token {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN.upper()}"]


def test_every_route_refuses_requests_without_the_token(guarded: Any, served_home: Home,
                                                        figures: dict[str, Any]) -> None:
    before = table_counts(served_home.db_path)
    refused = 0
    routes = every_route(guarded.asgi)
    for method, path in routes:
        body = json.dumps(BODIES.get(path, {"model": "locft", "prompt": "x"})).encode() if method != "GET" else None
        for auth in WRONG:
            headers = {} if auth is None else {"Authorization": auth}
            status, payload = http(guarded, method, path + ("?api_key=" + TOKEN if auth is None else ""), body, headers)
            if path in OPEN:
                assert status == 200, (path, payload[:200])  # liveness, or static files without data
                continue
            assert status == 401, (method, path, auth, payload[:200])
            err = json.loads(payload)["error"]
            assert err["type"] == "authentication_error" and "Authorization: Bearer" in err["message"]
            refused += 1
    assert table_counts(served_home.db_path) == before  # nothing got through
    # ...and the right token opens them
    for auth in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "):
        status, _ = http(guarded, "GET", "/locft/status", None, {"Authorization": auth})
        assert status == 200, auth
    figures["requests refused without the right token"] = refused
    figures["routes"] = len(routes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60),
       path=st.sampled_from(["/locft/status", "/v1/models", "/locft/versions", "/locft/overview", "/metrics",
                             "/openapi.json"]))
def test_no_authorization_value_but_the_token_gets_in(guarded: Any, value: str, path: str) -> None:
    if TOKEN in value:
        return
    status, _ = http(guarded, "GET", path, None, {"Authorization": value})
    assert status == 401, value
