"""`locft ask` (through a running server, or loading the model itself) and `locft serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from locft.api import start_api_server
from locft.api.client import api_file, discover_api, remove_api_info, write_api_info
from locft.cli.main import cli
from locft.config import ModelConfig
from locft.engine.model_io import LoadedModel, load_base
from locft.errors import NotFoundError, error_code
from locft.home import DaemonInfo, Home, write_daemon_info
from tests.cli.test_console_script import CHECK_IMPORTS, HEAVY
from tests.round_helpers import FACTS
from tests.serving_helpers import make_served_home

PROMPT, ANSWER = FACTS[0]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path_factory.mktemp("load-home"))


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, loaded: LoadedModel) -> Home:
    return make_served_home(tmp_path_factory.mktemp("serve") / "home", tiny_model_dir, loaded)


def run(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"LOCFT_HOME": str(home.root)}, catch_exceptions=False)
    return result.exit_code, result.stdout + (result.stderr if result.exit_code else "")


def test_ask_loads_the_model_itself_when_no_server_runs(served_home: Home) -> None:
    assert discover_api(served_home) is None
    code, out = run(served_home, "ask", PROMPT)
    assert code == 0 and out.strip().splitlines()[-1] == ANSWER, out
    code, out = run(served_home, "ask", PROMPT, "--version", "0", "--json")
    data = json.loads(out)
    assert code == 0 and data["version"] == 0 and data["text"] != ANSWER and data["prompt_format"] == "raw"
    code, out = run(served_home, "ask", PROMPT, "--compare", "--max-tokens", "6")
    assert code == 0 and f"locft-v1 (raw): {ANSWER}" in out and "locft-v0 (raw): " in out
    code, out = run(served_home, "ask", PROMPT, "--version", "7")
    assert code == error_code(NotFoundError)[1] and "no version 7" in out


def test_ask_goes_through_a_running_server(served_home: Home, loaded: LoadedModel) -> None:
    with start_api_server(served_home, port=0, loaded=loaded, watch=False) as api:
        # the daemon announces its API in run/daemon.json (a live pid)
        write_daemon_info(served_home, DaemonInfo(pid=os.getpid(), started_at="now", api_url=api.url))
        try:
            assert discover_api(served_home) == api.url
        finally:
            served_home.daemon_file.unlink()
        assert discover_api(served_home) is None
        write_api_info(served_home, api.url)  # `locft serve` in run/api.json
        try:
            assert discover_api(served_home) == api.url
            before = api.model_server.requests_run
            code, out = run(served_home, "ask", PROMPT, "--compare", "--json")
            data = json.loads(out)
            assert code == 0 and data["text"] == ANSWER and data["base"]["version"] == 0
            assert api.model_server.requests_run == before + 2  # the server answered, nothing loaded here
            code, out = run(served_home, "ask", PROMPT, "--chat", "--max-tokens", "4", "--json")
            assert code == 0 and json.loads(out)["prompt_format"] == "chat"
            code, out = run(served_home, "ask", PROMPT, "--version", "9")
            assert code == 1 and "no version 9" in out
        finally:
            remove_api_info(served_home)
    assert not api_file(served_home).exists()


def test_serve_runs_in_the_foreground_until_sigterm(served_home: Home) -> None:
    env = {**os.environ, "LOCFT_HOME": str(served_home.root)}
    proc = subprocess.Popen([sys.executable, "-m", "locft.cli.main", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        url = None
        while url is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "locft serve did not announce itself"
            url = discover_api(served_home)
            time.sleep(0.1)
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok", "version": 1}
        code, out = run(served_home, "ask", PROMPT)
        assert code == 0 and out.strip() == ANSWER
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "serving locft-v1 at http://127.0.0.1:" in out and not api_file(served_home).exists()
    assert '"GET /health" 200' in out and '"POST /locft/ask" 200' in out  # the access log, on by default


def test_ask_and_serve_help_never_import_torch(served_home: Home) -> None:
    commands = [["ask", "--help"], ["serve", "--help"], ["--help"]]
    env = {**os.environ, "LOCFT_HOME": str(served_home.root)}
    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, json.dumps(commands), json.dumps(HEAVY)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--compare" in done.stdout and "OpenAI-compatible" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
