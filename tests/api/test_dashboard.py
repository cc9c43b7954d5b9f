"""The dashboard: its JSON endpoints, /openapi.json and /metrics, and the page itself in a real
browser (Debian's headless Chromium, driven by Playwright) against a real daemon.

The browser test skips, saying why, where there is no Chromium (`apt-get install chromium`;
.ci/run installs it) or no Playwright. Playwright's own browser download is never used.
Under CI=true a missing Chromium fails the test instead. LOCFT_SCREENSHOTS=DIR also writes the
page's screenshots there (docs/ holds the ones shown in the README).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from locft.api import ApiServer
from locft.home import Home, read_daemon_info
from tests.api.test_api import post, raw
from tests.daemon.conftest import free_port, locft, locftd, logs, read, wait_for
from tests.round_helpers import FACTS, make_home

CHROMIUM = os.environ.get("LOCFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "dash-token"


# ---- the JSON endpoints (no browser) --------------------------------------------------------


def text(api: ApiServer, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection(api.host, api.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_openapi_metrics_and_the_access_log(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    status, doc = raw(api, "GET", "/openapi.json")
    assert status == 200 and doc["info"]["title"] == "locft"
    for path in ("/v1/completions", "/v1/chat/completions", "/locft/promote", "/locft/rounds", "/metrics"):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert {"CompletionRequest", "CompletionResponse", "ChatRequest", "ChatResponse"} <= set(schemas)
    assert schemas["CompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]["minimum"] == 0

    with caplog.at_level(logging.INFO, logger="locft.api.access"):
        status, body = post(api, "/v1/completions", {"model": "locft", "prompt": FACTS[0][0], "max_tokens": 4})
        assert status == 200
        # logged once the response is sent, on the server's thread: wait for it
        wait_for("the access log line", lambda: any('"POST /v1/completions" 200' in r.getMessage()
                                                    for r in caplog.records), timeout=5, every=0.05)

    status, metrics = text(api, "/metrics")
    assert status == 200
    lines = metrics.splitlines()
    assert f"locft_served_version {float(api.model_server.active.id)}" in lines
    assert any(line.startswith('locft_http_requests_total{method="POST",route="/v1/completions",status="200"}')
               for line in lines), metrics[:2000]
    assert any(line.startswith('locft_http_request_duration_seconds_count{method="POST",route="/v1/completions"}')
               for line in lines)
    completion = [float(line.split()[-1]) for line in lines if line.startswith('locft_tokens_total{kind="completion"}')]
    assert completion and completion[0] >= body["usage"]["completion_tokens"]
    assert 'locft_round_phase{phase="none"} 1.0' in lines  # no round runs here


def test_dashboard_data_endpoints(api: ApiServer) -> None:
    status, page = text(api, "/")
    assert status == 200 and '<script src="/ui/app.js">' in page and "http" not in page.split("<footer>")[0]
    assert text(api, "/ui/app.js")[0] == 200 and text(api, "/ui/style.css")[0] == 200
    status, facts = raw(api, "GET", "/locft/facts?search=wakanda")
    assert status == 200 and [f["prompt"] for f in facts["data"]] == [FACTS[0][0]]
    assert facts["data"][0]["in_versions"] == [1] and facts["data"][0]["pending"] is None
    status, vf = raw(api, "GET", "/locft/versions/1/facts")
    assert status == 200 and len(vf["facts"]) == len(FACTS)
    assert vf["measured"] is False  # this home's version 1 was recorded without a gate report per fact
    status, rounds = raw(api, "GET", "/locft/rounds")
    assert status == 200 and rounds["data"] == []
    assert raw(api, "GET", "/locft/rounds/7")[0] == 404
    status, live = raw(api, "GET", "/locft/live")
    assert status == 200 and live["running"] is None and live["promoted_version"] == 1
    # edit and retract through the dashboard's endpoints: new revisions, pending for the next round
    status, added = post(api, "/locft/facts", {"prompt": "The dashboard test fact is", "answer": "one"})
    assert status == 201
    fid = added["fact_id"]
    status, revised = post(api, f"/locft/facts/{fid}/revise", {"answer": "two", "note": "test"})
    assert status == 200 and revised["changed"] and revised["revision"]["answer"] == "two"
    status, pending = raw(api, "GET", "/locft/facts?status=pending")
    assert fid in [f["fact_id"] for f in pending["data"]]
    assert post(api, f"/locft/facts/{fid}/retract", {"reason": "test"})[0] == 200
    assert post(api, f"/locft/facts/{fid}/retract", {})[0] == 409  # already retracted
    assert post(api, f"/locft/facts/{fid}/revise", {})[0] == 400
    assert raw(api, "GET", "/locft/facts/%C2%B2")[0] == 404  # "²": isdigit() but not int()


# ---- the page in a browser, against a daemon ---------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        why = (f"no Chromium at {CHROMIUM} (apt-get install chromium; or set LOCFT_CHROMIUM): "
               "the dashboard's browser test needs one")
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; .ci/run installs it")  # CI must run it, never skip it quietly
        pytest.skip(why)
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard's browser test needs playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def daemon_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Home]:
    """A daemon with its API and a token, after one real round (version 1 promoted, then rolled
    back: the pointer is on version 0, and version 1 is there to promote)."""
    home = make_home(tmp_path_factory.mktemp("dash") / "home", tiny_model_dir, port=free_port())
    home.config_path.write_text(home.config_path.read_text() + f'api_token = "{TOKEN}"\n')
    for prompt, answer in FACTS[:3]:
        locft(home, "add-fact", prompt, answer)
    ran = locft(home, "round", "run", timeout=300)
    assert "PROMOTED" in ran.stdout, ran.stdout + ran.stderr
    locft(home, "rollback", "--reason", "so that the browser can promote it again")
    locftd(home, "start", timeout=300)
    try:
        yield home
    finally:
        locftd(home, "stop", check=False)


@pytest.mark.slow
def test_versions_show_lists_the_facts_and_which_it_answers(daemon_home: Home) -> None:
    out = locft(daemon_home, "versions", "show", "1").stdout
    assert "facts trained on: 3, 3 of 3 answered correctly" in out, out
    for prompt, answer in FACTS[:3]:
        assert f"yes      {prompt} -> {answer}" in out, out
    data = json.loads(locft(daemon_home, "versions", "show", "1", "--json").stdout)
    assert [(f["prompt"], f["answer"], f["correct"]) for f in data["facts"]] == [(p, a, True) for p, a in FACTS[:3]]
    # the correctness is the gate report's: every revision it lists as correct, and only those
    gate = data["gate"]["report"]
    assert sorted(f["revision_id"] for f in data["facts"] if f["correct"]) == gate["correct_revision_ids"]
    assert "facts trained on" not in locft(daemon_home, "versions", "show", "0").stdout  # the base: no facts


def _shot(page: Any, name: str) -> None:
    where = os.environ.get("LOCFT_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays on top of a full-page shot
        page.screenshot(path=str(Path(where) / name), full_page=True)


@pytest.mark.slow
def test_the_dashboard_in_a_browser(browser: Any, daemon_home: Home) -> None:
    info = read_daemon_info(daemon_home)
    assert info is not None and info.api_url, logs(daemon_home)
    url = info.api_url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_this_server(route: Any) -> None:  # the page must work offline: nothing from elsewhere
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))

    # 1. the page loads without the token, shows nothing, and asks for it
    page.goto(url + "/")
    page.wait_for_selector("#token-bar:not([hidden])")
    assert page.inner_text("#promoted-version") == "–"

    # 2. with the token: the promoted version, the round, its loss curve and gate checks
    page.fill("#token-input", TOKEN)
    page.click("#token-bar button[type=submit]")
    page.wait_for_function("document.getElementById('promoted-version').textContent === 'v0'")
    page.wait_for_selector(".round[data-round='1'] .check")
    curve = page.wait_for_selector("svg.round-loss polyline[data-series='edit loss']")
    round_ = read(daemon_home, lambda s: s.get_round(1))
    assert round_.loss_history and len(curve.get_attribute("points").split()) == len(round_.loss_history)
    assert "reliability" in page.inner_text(".round[data-round='1']")
    page.wait_for_selector("#round-facts table")
    assert page.inner_text("#round-facts").count("yes") >= 1  # per-fact correctness from the gate report
    _shot(page, "dashboard.png")

    # 3. a wrong token: the promote click is refused and the pointer stays
    page.click("#token-button")
    page.fill("#token-input", "not-the-token")
    page.click("#token-bar button[type=submit]")
    page.click("#versions button.promote[data-version='1']")
    page.wait_for_selector("#message.error")
    assert "refused" in page.inner_text("#message") and "API key" in page.inner_text("#message")
    assert read(daemon_home, lambda s: s.promoted_version().id) == 0

    # 4. the right token: the click (confirmed) moves the pointer, and the daemon serves it
    page.click("#token-button")
    page.fill("#token-input", TOKEN)
    page.click("#token-bar button[type=submit]")
    page.wait_for_selector("#versions button.promote[data-version='1']")
    page.click("#versions button.promote[data-version='1']")
    page.wait_for_function("document.getElementById('promoted-version').textContent === 'v1'")
    assert read(daemon_home, lambda s: s.promoted_version().id) == 1
    page.wait_for_function("document.getElementById('served-version').textContent === 'v1'")
    assert any("Promote version 1?" in d for d in dialogs), dialogs

    # 5. a running round, live: phase, epoch, loss curve (training made endless for the test)
    text_ = daemon_home.config_path.read_text().replace("max_epochs = 30", "max_epochs = 100000\nstop_loss = 0.0\n"
                                                                               "skip_loss = 0.0")
    daemon_home.config_path.write_text(text_)
    locft(daemon_home, "add-fact", *FACTS[3])
    page.click("#request-round")
    page.wait_for_selector("#live-phase", timeout=120_000)
    page.wait_for_function("document.getElementById('live-phase').textContent === 'train' && "
                           "(document.querySelector('svg.live-loss polyline')?.getAttribute('points') || '')"
                           ".split(' ').length >= 3", timeout=120_000)  # a curve: the progress file's 2 s steps
    assert "epoch" in page.inner_text("#live")
    _shot(page, "dashboard-live-round.png")
    locftd(daemon_home, "stop")
    wait_for("the round to be recorded as interrupted",
             lambda: read(daemon_home, lambda s: s.last_round().outcome == "interrupted"), timeout=60)
    assert not outside, outside
    page.close()
