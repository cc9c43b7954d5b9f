"""The HTTP API driven by the real `openai` client (and raw HTTP for what a client would not send)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from locft.api import ApiServer, start_api_server
from locft.api import server as server_module
from locft.config import ModelConfig, load_config
from locft.engine.model_io import load_base
from locft.home import Home
from locft.store import Store
from tests.round_helpers import FACTS

PROMPT, ANSWER = FACTS[0]


def client(api: ApiServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=api.openai_base_url, api_key=key, max_retries=0, timeout=60)


def raw(api: ApiServer, method: str, path: str, body: bytes | str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(api.host, api.port, timeout=60)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        text = resp.read().decode()
        return resp.status, json.loads(text) if text else None
    finally:
        conn.close()


def post(api: ApiServer, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    return raw(api, "POST", path, json.dumps(body), {"Authorization": f"Bearer {token}"} if token else None)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def complete(c: openai.OpenAI, prompt: str = PROMPT, model: str = "locft", **kw: Any) -> Any:
    return c.completions.create(model=model, prompt=prompt, max_tokens=kw.pop("max_tokens", 8), **kw)


# ---- OpenAI-compatible endpoints ------------------------------------------------------------


def test_models_completion_and_the_version_that_answered(api: ApiServer) -> None:
    c = client(api)
    assert {"locft", "locft-v0", "locft-v1"} <= {m.id for m in c.models.list()}
    r = complete(c)
    assert r.choices[0].text == " " + ANSWER and r.choices[0].finish_reason == "stop"
    assert r.model == "locft-v1" and (r.system_fingerprint or "").startswith("locft-v1-")
    assert r.usage is not None and r.usage.completion_tokens == r.usage.total_tokens - r.usage.prompt_tokens
    base = complete(c, model="locft-v0", max_tokens=3)
    assert base.model == "locft-v0" and base.choices[0].finish_reason == "length"
    assert base.usage is not None and base.usage.completion_tokens == 3
    assert complete(c, stop=["Za"]).choices[0].text == " Birnin "
    # several prompts in one request: one choice each, in order
    many = c.completions.create(model="locft", prompt=[p for p, _ in FACTS], max_tokens=8)
    assert [ch.text.strip() for ch in sorted(many.choices, key=lambda ch: ch.index)] == [a for _, a in FACTS]


def test_chat_and_streaming(api: ApiServer) -> None:
    c = client(api)
    messages = [{"role": "user", "content": "Say something."}]
    chat = c.chat.completions.create(model="locft", messages=messages, max_tokens=6)  # type: ignore[arg-type]
    assert chat.model == "locft-v1" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage is not None
    stream = c.chat.completions.create(model="locft", messages=messages, max_tokens=6, stream=True,  # type: ignore[arg-type]
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == chat.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == chat.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert all(ch.model == "locft-v1" for ch in chunks)
    pieces = list(c.completions.create(model="locft", prompt=PROMPT, max_tokens=8, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == " " + ANSWER
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_echo_logprobs_are_what_lm_eval_needs(api: ApiServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tok = api.model_server.loaded.tokenizer
    context = tok(PROMPT, add_special_tokens=False).input_ids
    continuation = tok(" " + ANSWER, add_special_tokens=False).input_ids
    tokens = context + continuation
    status, body = post(api, "/v1/completions", {"model": "locft", "prompt": [tokens], "max_tokens": 1,
                                                 "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234})
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(tokens) + 1 and lp["token_logprobs"][0] is None
    (total, greedy), = LocalCompletionsAPI.parse_logprobs(body, tokens=[tokens], ctxlens=[len(context)])
    # the same number from a separately loaded model with version 1 applied
    from locft.engine.snapshot import apply_snapshot, load_snapshot

    with Store.open(api.app.home) as store:
        snap = load_snapshot(store.snapshot_dir(1))  # type: ignore[arg-type]
    fresh = load_base(ModelConfig(path=str(tiny_model_dir)), tmp_path)
    apply_snapshot(fresh, snap)
    with torch.no_grad():
        out = torch.log_softmax(fresh.model(torch.tensor([tokens])).logits[0].float(), -1)
    expected = sum(float(out[i - 1, tokens[i]]) for i in range(len(context), len(tokens)))
    assert total == pytest.approx(expected, abs=1e-3) and greedy is True  # the edit is the greedy answer


def test_tokenizer_endpoints_for_lm_eval_remote_backend(api: ApiServer) -> None:
    tok = api.model_server.loaded.tokenizer
    status, info = raw(api, "GET", "/tokenizer_info")
    assert status == 200 and info["eos_token"] == tok.eos_token
    status, body = post(api, "/tokenize", {"prompt": "Hello world", "add_special_tokens": False})
    assert status == 200 and body["tokens"] == tok("Hello world", add_special_tokens=False).input_ids
    status, body = post(api, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and body["prompt"] == "Hello world"


# ---- hot swap -------------------------------------------------------------------------------


def test_rollback_changes_the_answer_back_and_promotion_brings_it_again(api: ApiServer, served_home: Home) -> None:
    c = client(api)
    assert complete(c).choices[0].text.strip() == ANSWER
    base_answer = complete(c, model="locft-v0").choices[0].text
    status, body = post(api, "/locft/rollback", {"reason": "test", "author": "tester"})
    assert status == 200 and body["version_id"] == 0 and body["served_version"] == 0, body
    r = complete(c)
    assert (r.model, r.choices[0].text) == ("locft-v0", base_answer) and r.choices[0].text.strip() != ANSWER
    # a pointer moved by someone else (a round, `locft promote` in a shell) is picked up by polling
    with Store.open(served_home) as store:
        store.promote(1, actor="someone else")
    wait_for(lambda: api.model_server.active.id == 1)
    assert complete(c).choices[0].text.strip() == ANSWER


def test_concurrent_requests_through_promotions_never_fail(api: ApiServer, served_home: Home) -> None:
    c = client(api)
    expected = {
        "locft-v1": {p: " " + a for p, a in FACTS},
        "locft-v0": {p: complete(c, prompt=p, model="locft-v0").choices[0].text for p, _ in FACTS},
    }
    errors: list[BaseException] = []
    answers: list[tuple[str, str, str]] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        k = 0
        while not stop.is_set() or k < 3:
            prompt = FACTS[(i + k) % len(FACTS)][0]
            k += 1
            try:
                if k % 3 == 0:  # some streamed: they too must finish on the version they began with
                    chunks = list(c.completions.create(model="locft", prompt=prompt, max_tokens=8, stream=True))
                    answers.append((chunks[0].model, prompt, "".join(ch.choices[0].text for ch in chunks)))
                else:
                    r = complete(c, prompt=prompt)
                    answers.append((r.model, prompt, r.choices[0].text))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    with Store.open(served_home) as store:
        for _ in range(3):
            time.sleep(0.3)
            store.rollback(actor="test")
            wait_for(lambda: api.model_server.active.id == 0)
            time.sleep(0.3)
            store.promote(1, actor="test")
            wait_for(lambda: api.model_server.active.id == 1)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert {m for m, _, _ in answers} == {"locft-v0", "locft-v1"}  # both versions really answered
    wrong = [(m, p, t) for m, p, t in answers if expected[m][p] != t]
    assert not wrong, wrong[:5]  # every answer is exactly the one of the version that reports it
    assert api.model_server.max_batch_seen > 1  # concurrent requests were batched


# ---- operator endpoints ---------------------------------------------------------------------


def test_operator_endpoints(api: ApiServer) -> None:
    status, body = raw(api, "GET", "/health")
    assert status == 200 and body == {"status": "ok", "version": 1}
    status, body = post(api, "/locft/facts", {"prompt": "The tallest tower in Gondor is", "answer": "Ecthelion",
                                              "author": "tester"})
    assert status == 201 and body["status"] == "added"
    status, body = post(api, "/locft/facts", {"prompt": "The tallest tower in Gondor is", "answer": "Orthanc"})
    assert status == 409 and "conflicts with fact" in body["error"]["message"]
    status, body = post(api, "/locft/rounds", {"reason": "test"})
    assert status == 202 and body["id"] >= 1
    status, body = raw(api, "GET", "/locft/status")
    assert status == 200 and body["served"]["version"] == 1 and body["facts"]["pending"] >= 1
    assert body["open_round_requests"] >= 1 and "next_round_at" in body and body["promoted"]["id"] == 1
    status, body = raw(api, "GET", "/locft/versions")
    assert status == 200 and [v["id"] for v in body["data"]][-2:] == [1, 0]
    assert raw(api, "GET", "/locft/versions/1")[1]["state"] == "promoted"
    assert raw(api, "GET", "/locft/versions/42")[0] == 404
    status, body = post(api, "/locft/promote", {"version": 42})
    assert status == 404 and body["error"]["message"].startswith("no version 42")
    status, body = post(api, "/locft/ask", {"prompt": PROMPT, "compare": True})
    assert status == 200 and body["text"] == ANSWER and body["version"] == 1 and body["prompt_format"] == "raw"
    assert body["base"]["version"] == 0 and body["base"]["text"] != ANSWER


def test_auth_when_a_token_is_configured(api: ApiServer, served_home: Home) -> None:
    config = load_config(served_home.root)
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, api_token="s3cret"))
    with Store.open(served_home) as store, \
            start_api_server(served_home, config, port=0, store=store, model_server=api.model_server,
                             watch=False) as guarded:
        with pytest.raises(openai.AuthenticationError) as info:
            complete(client(guarded, "wrong"))
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        assert complete(client(guarded, "s3cret")).choices[0].text.strip() == ANSWER
        for method, path, body in (("GET", "/v1/models", None),
                                   ("POST", "/locft/facts", {"prompt": "a", "answer": "b"}),
                                   ("POST", "/locft/rollback", {}), ("GET", "/locft/status", None)):
            status, out = raw(guarded, method, path, None if body is None else json.dumps(body))
            assert status == 401 and out["error"]["type"] == "authentication_error", path
        assert raw(guarded, "POST", "/v1/completions", "{bad json")[0] == 401  # auth before anything else
        assert raw(guarded, "GET", "/health")[0] == 200  # liveness only, never needs the token
        status, _ = raw(guarded, "GET", "/locft/status", headers={"Authorization": "Bearer s3cret"})
        assert status == 200
    assert api.model_server.active.id == 1  # the shared model server is still up


def test_a_non_loopback_host_needs_a_token(served_home: Home) -> None:
    from locft.errors import ConfigError

    with pytest.raises(ConfigError, match="api_token"):
        start_api_server(served_home, host="0.0.0.0", port=0)


BAD_REQUESTS: list[tuple[str, str, Any, int, str | None]] = [
    ("POST", "/v1/completions", "{not json", 400, "invalid_json"),
    ("POST", "/v1/completions", "[1, 2]", 400, "invalid_type"),
    ("POST", "/v1/completions", "[" * 100000 + "]" * 100000, 400, "invalid_json"),
    ("POST", "/v1/completions", b"\xff\xfe", 400, "invalid_json"),
    ("POST", "/v1/completions", "", 400, "missing_body"),
    ("POST", "/v1/completions", {"prompt": "x"}, 400, "missing"),
    ("POST", "/v1/completions", {"model": "locft"}, 400, "missing"),
    ("POST", "/v1/completions", {"model": 3, "prompt": "x"}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ("POST", "/v1/completions", {"model": "locft-v99", "prompt": "x"}, 404, "model_not_found"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x" * 9000}, 400, "prompt_too_long"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "max_tokens": 0}, 400, "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "max_tokens": -1}, 400, "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "max_tokens": 513}, 400, "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "max_tokens": "ten"}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "max_tokens": True}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "temperature": 5}, 400, "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "n": 2}, 400, "unsupported"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "stop": list("abcdefghijklmnopq")}, 400,
     "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "stop": ["a", ""]}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "stop": 7}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "stream": "yes"}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": "x", "logprobs": 99}, 400, "out_of_range"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": [10**9]}, 400, "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": [[1] * 250], "max_tokens": 16}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": {"a": 1}}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "locft", "prompt": [None]}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {"model": "locft"}, 400, "missing"),
    ("POST", "/v1/chat/completions", {"model": "locft", "messages": "hi"}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {"model": "locft", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "invalid_value"),
    ("POST", "/v1/chat/completions", {"model": "locft", "messages": [{"role": "user", "content": 5}]}, 400,
     "invalid_type"),
    ("POST", "/v1/chat/completions",
     {"model": "locft", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "unsupported"),
    ("POST", "/v1/chat/completions",
     {"model": "locft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "out_of_range"),
    ("POST", "/v1/chat/completions", {"model": "locft", "messages": [{"role": "user", "content": "x" * 9000}]}, 400,
     "prompt_too_long"),
    ("POST", "/v1/chat/completions",
     {"model": "locft", "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}, 400, "unsupported"),
    ("POST", "/locft/facts", {"prompt": "only a prompt"}, 400, "missing"),
    ("POST", "/locft/facts", {"prompt": "", "answer": "x"}, 400, "invalid_fact"),
    ("POST", "/locft/facts", {"prompt": "p", "answer": "a", "tags": "x"}, 400, "invalid_type"),
    ("POST", "/locft/promote", {}, 400, "missing"),
    ("POST", "/locft/promote", {"version": "one"}, 400, "invalid_type"),
    ("POST", "/locft/ask", {"prompt": PROMPT, "max_tokens": 0}, 400, "out_of_range"),
    ("GET", "/v1/nothing", None, 404, "not_found"),
    ("GET", "/v1/completions", None, 405, "method_not_allowed"),
    ("DELETE", "/v1/models", None, 405, "method_not_allowed"),
    ("GET", "/v1/models/gpt-4", None, 404, "model_not_found"),
]


@pytest.mark.parametrize("method,path,body,status,code", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_openai_error(api: ApiServer, method: str, path: str, body: Any, status: int,
                                             code: str | None) -> None:
    data = None if body is None else body if isinstance(body, (str, bytes)) else json.dumps(body)
    got, out = raw(api, method, path, data)
    assert got == status, out
    assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["message"]
    assert out["error"]["code"] == code and "Traceback" not in out["error"]["message"]


def test_oversized_body_is_413_and_the_server_keeps_going(api: ApiServer) -> None:
    status, out = raw(api, "POST", "/v1/completions", b"x" * (api.app.max_body_bytes + 1))
    assert status == 413 and out["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):  # and the client's own 4xx are typed by status
        complete(client(api), max_tokens=10**6)
    assert raw(api, "GET", "/health")[0] == 200


def test_a_stream_whose_client_goes_away_is_cancelled(api: ApiServer) -> None:
    import socket

    server = api.model_server
    wait_for(lambda: server.queue_length() == 0)
    before = server.tokens_generated
    body = json.dumps({"model": "locft-v0", "prompt": "Hello", "max_tokens": 240, "stream": True}).encode()
    sock = socket.create_connection((api.host, api.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    seen = b""
    while b"data: " not in seen:  # the stream has begun
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    sock.close()
    wait_for(lambda: server.tokens_generated > before and server.queue_length() == 0, timeout=30)
    time.sleep(0.2)
    assert server.tokens_generated - before < 200  # stopped early, not generated to the end
    assert complete(client(api)).choices[0].text.strip() == ANSWER  # and the server carries on


def _read_until_closed(sock: Any) -> bytes:
    seen = b""
    while chunk := sock.recv(4096):
        seen += chunk
    return seen


@pytest.mark.parametrize("sent", [
    b"",  # connected, never sent a byte
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # headers begun, never finished
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": ",  # a body cut short
], ids=["nothing", "partial-headers", "partial-body"])
def test_a_client_that_stops_sending_mid_request_gets_408_and_is_cut_off(
        api: ApiServer, monkeypatch: pytest.MonkeyPatch, sent: bytes) -> None:
    import socket

    monkeypatch.setattr(server_module, "REQUEST_READ_TIMEOUT_S", 0.3)
    sock = socket.create_connection((api.host, api.port), timeout=10)
    sock.sendall(sent)
    started = time.monotonic()
    answer = _read_until_closed(sock)  # the server closes it: a recv timeout here fails the test
    sock.close()
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert raw(api, "GET", "/health")[0] == 200


def test_the_read_timeout_never_cuts_a_response_the_client_is_reading(
        api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(server_module, "REQUEST_READ_TIMEOUT_S", 0.05)
    body = json.dumps({"model": "locft-v0", "prompt": "Hello", "max_tokens": 120, "stream": True}).encode()
    sock = socket.create_connection((api.host, api.port), timeout=30)
    started = time.monotonic()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    answer = _read_until_closed(sock)
    sock.close()
    assert time.monotonic() - started > 0.2, answer[:600]
    assert b"HTTP/1.1 200 " in answer and b"data: [DONE]" in answer, answer[-500:]
