"""Hostile input, property-based: every HTTP endpoint, `locft add-fact`, `locft import` and the
commands that take numbers. Whatever comes in: never a crash, a traceback or a 500; always a
clear error (a 4xx JSON error / one `error:` line); the store unchanged when refused; and what
is accepted is stored exactly (after stripping surrounding whitespace).

The explicit examples in tests/api/test_api.py (BAD_REQUESTS) stay; these add volume and
shapes nobody thought of. Input counts go to docs/reliability.md (the `figures` fixture).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from locft.api import ApiServer
from locft.cli.main import cli
from locft.errors import ERROR_CODES
from locft.home import Home
from locft.store import Store
from tests.reliability.conftest import http, table_counts
from tests.reliability.hostile import Deep, any_text, dumps, json_values, mutated, numbers, strings
from tests.round_helpers import FACTS

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
TRIED: dict[str, int] = {}


def tried(what: str) -> None:
    TRIED[what] = TRIED.get(what, 0) + 1


# ---- HTTP -------------------------------------------------------------------------------------


def check_response(status: int, payload: bytes) -> Any:
    """Never a 5xx; a 4xx is a JSON error in OpenAI's shape with a message and no traceback."""
    text = payload.decode("utf-8")
    assert status < 500, text[:500]
    assert "Traceback" not in text and "internal server error" not in text, text[:500]
    if status >= 400:
        err = json.loads(text)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"].strip(), err
        return None
    if text.startswith("data: "):  # a stream: an in-band error must not be a server error
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert all("error" not in e or e["error"]["type"] != "server_error" for e in events), events
        return events
    return json.loads(text)


PROMPT = FACTS[0][0]
ENDPOINTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/v1/completions": ({"model": "locft", "prompt": PROMPT, "max_tokens": 2},
                        ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream", "echo", "logprobs",
                         "seed", "n", "best_of", "stream_options", "logit_bias", "suffix", "presence_penalty"]),
    "/v1/chat/completions": ({"model": "locft-v1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                             ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stop",
                              "stream", "logprobs", "top_logprobs", "tools", "seed"]),
    "/tokenize": ({"prompt": "Hello"}, ["prompt", "add_special_tokens"]),
    "/detokenize": ({"tokens": [1, 2, 3]}, ["tokens"]),
    "/locft/facts": ({"prompt": "The river through Gondor is", "answer": "Anduin"},
                     ["prompt", "answer", "subject", "paraphrases", "probes", "tags", "source", "replace", "author"]),
    "/locft/rounds": ({"reason": "hostile"}, ["reason", "author"]),
    "/locft/promote": ({"version": 1}, ["version", "force", "reason", "author"]),
    "/locft/rollback": ({"to": 0}, ["to", "reason", "author"]),
    "/locft/ask": ({"prompt": PROMPT, "max_tokens": 2}, ["prompt", "version", "chat", "max_tokens", "compare"]),
}
MUTATING = {"/locft/facts", "/locft/rounds", "/locft/promote", "/locft/rollback"}


def bodies(path: str) -> st.SearchStrategy[bytes]:
    valid, keys = ENDPOINTS[path]
    return st.one_of(
        mutated(valid, keys).map(lambda b: dumps(b).encode("utf-8")),  # mostly: a valid body, spoiled
        json_values.map(lambda v: dumps(v).encode("utf-8")),  # any JSON at all
        st.binary(max_size=64),  # not JSON, not UTF-8
    )


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_post_endpoints_never_fail_on_hostile_bodies(api: ApiServer, served_home: Home, path: str,
                                                     figures: dict[str, Any]) -> None:
    @settings(max_examples=120, **SETTINGS)  # type: ignore[arg-type]
    @given(body=bodies(path))
    @example(body=b'{"version": "\xc2\xb2"}')  # '²'.isdigit() is True, int('²') raises
    @example(body=b'{"version": 99999999999999999999999, "to": 99999999999999999999999}')
    @example(body=b'{"model": "locft-v\xc2\xb2", "prompt": "x", "messages": []}')
    @example(body=b'{"prompt": "\\ud800", "answer": "a"}')
    def run(body: bytes) -> None:
        tried(f"POST {path}")
        before = table_counts(served_home.db_path) if path in MUTATING else None
        status, payload = http(api, "POST", path, body)
        data = check_response(status, payload)
        if before is not None and status >= 400:
            assert table_counts(served_home.db_path) == before, "a refused request changed the store"
        if path == "/locft/facts" and status in (200, 201):
            sent = json.loads(body)
            with Store.open(served_home, sweep_orphans=False) as store:
                stored = store.get_fact(data["fact_id"]).fact.current
            if data["status"] == "added":  # accepted = stored exactly (surrounding whitespace aside)
                assert (stored.prompt, stored.answer) == (sent["prompt"].strip(), sent["answer"].strip())

    run()
    figures["inputs tried"] = TRIED.get(f"POST {path}", 0)
    assert http(api, "GET", "/health")[0] == 200  # and the server is still up


segments = st.one_of(strings, numbers.map(str)).map(
    lambda s: "".join(c if 32 < ord(c) < 256 and c not in "?#%" else quote(c.encode("utf-8", "surrogatepass"))
                      for c in s) or "x")


@settings(max_examples=150, **SETTINGS)  # type: ignore[arg-type]
@given(prefix=st.sampled_from(["/v1/models/", "/locft/versions/", "/locft/versions?state=", "/v1/", "/locft/", "/"]),
       segment=segments, method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE", "PATCH"]))
@example(prefix="/locft/versions/", segment="\xb2", method="GET")  # a latin-1 superscript two in the path
@example(prefix="/v1/models/", segment="locft-v\xb2", method="GET")
@example(prefix="/locft/versions/", segment="99999999999999999999999", method="GET")
@example(prefix="/", segment="%0A", method="GET")  # "/\n" once matched the dashboard's route (regex `$`)
def test_every_path_and_method_gets_an_answer_not_a_crash(api: ApiServer, prefix: str, segment: str,
                                                          method: str) -> None:
    tried("paths")
    status, payload = http(api, method, prefix + segment, b"{}" if method != "GET" else None)
    check_response(status, payload)


def test_get_endpoints_answer(api: ApiServer, figures: dict[str, Any]) -> None:
    for path in ("/health", "/v1/models", "/tokenizer_info", "/locft/status", "/locft/versions",
                 "/locft/versions/1", "/v1/models/locft-v1"):
        status, payload = http(api, "GET", path)
        assert status == 200, payload[:300]
        check_response(status, payload)
    figures["paths and methods tried"] = TRIED.get("paths", 0)


# ---- the CLI: add-fact, import, numbers -------------------------------------------------------


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home.resolve(tmp_path_factory.mktemp("cli-hostile") / "home")
    home.create()
    Store.open(home, create=True).close()
    return home


def run_cli(home: Home, args: list[str]) -> Any:
    result = CliRunner().invoke(cli, args, env={"LOCFT_HOME": str(home.root), "LOCFT_AUTHOR": "hostile"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"locft {args!r} raised {result.exception!r}") from result.exception
    # 0, a usage error (2), or the status of a documented error class (locft.errors.ERROR_CODES)
    documented = {0, 2} | {status for _, status in ERROR_CODES.values()}
    assert result.exit_code in documented, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code not in (0, 2) and "--json" in args:  # the contract: one JSON object on stdout
        error = json.loads(result.stdout)["error"]
        assert error["code"] and error["message"], result.stdout
    elif result.exit_code not in (0, 2):  # one clear line last (a progress bar may come before it)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and last != "error:", result.stderr
    return result


cli_text = st.one_of(strings, st.sampled_from([p for p, _ in FACTS]))


@settings(max_examples=150, **SETTINGS)  # type: ignore[arg-type]
@given(prompt=cli_text, answer=cli_text, subject=st.none() | strings,
       paraphrases=st.lists(strings, max_size=22), probes=st.lists(strings, max_size=3),
       tags=st.lists(any_text, max_size=3), replace=st.booleans())
@example(prompt="Caf\udce9?", answer="x", subject=None, paraphrases=[], probes=[], tags=[], replace=False)
def test_add_fact_from_the_cli(cli_home: Home, prompt: str, answer: str, subject: str | None,
                               paraphrases: list[str], probes: list[str], tags: list[str], replace: bool) -> None:
    tried("locft add-fact")
    args = ["add-fact", prompt, answer, "--json"]
    if subject is not None:
        args += ["--subject", subject]
    for p in paraphrases:
        args += ["--paraphrase", p]
    for p in probes:
        args += ["--probe", p]
    for t in tags:
        args += ["--tag", t]
    if replace:
        args.append("--replace")
    before = table_counts(cli_home.db_path)
    result = run_cli(cli_home, args)
    if result.exit_code != 0:
        assert table_counts(cli_home.db_path) == before, "a refused add-fact changed the store"
        return
    out = json.loads(result.stdout)
    with Store.open(cli_home, sweep_orphans=False) as store:
        stored = store.get_fact(out["fact_id"]).fact.current
    if out["status"] != "duplicate":
        assert (stored.prompt, stored.answer) == (prompt.strip(), answer.strip())
        assert list(stored.paraphrases) == [p.strip() for p in paraphrases]


records = st.one_of(
    mutated({"prompt": "Who painted the Night Watch?", "answer": "Rembrandt"},
            ["prompt", "answer", "target", "subject", "paraphrases", "locality", "probes", "source", "tags"]),
    json_values,
)


def _file(fmt: str, rows: list[Any], raw: bytes) -> bytes:
    if fmt == "raw":
        return raw
    if fmt == "jsonl":
        return "\n".join(dumps(r) for r in rows).encode("utf-8", "surrogatepass")
    if fmt == "json":
        return dumps(rows).encode("utf-8", "surrogatepass")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "answer", "subject", "paraphrases", "tags"])
    for r in rows:
        r = r if isinstance(r, dict) else {"prompt": r}
        writer.writerow([r.get(k) if not isinstance(r.get(k), Deep) else "deep" for k in
                         ("prompt", "answer", "subject", "paraphrases", "tags")])
    return out.getvalue().encode("utf-8", "surrogatepass")


@settings(max_examples=150, **SETTINGS)  # type: ignore[arg-type]
@given(fmt=st.sampled_from(["jsonl", "json", "csv", "raw"]), rows=st.lists(records, max_size=6),
       raw=st.binary(max_size=200), skip_invalid=st.booleans(), replace=st.booleans())
def test_import_is_all_or_nothing_and_never_crashes(cli_home: Home, tmp_path_factory: pytest.TempPathFactory,
                                                    fmt: str, rows: list[Any], raw: bytes, skip_invalid: bool,
                                                    replace: bool) -> None:
    tried("locft import")
    path = tmp_path_factory.mktemp("import") / f"facts.{'jsonl' if fmt == 'raw' else fmt}"
    path.write_bytes(_file(fmt, rows, raw))
    args = ["import", str(path), "--json"] + (["--skip-invalid"] if skip_invalid else []) + (
        ["--replace"] if replace else [])
    before = table_counts(cli_home.db_path)
    result = run_cli(cli_home, args)
    after = table_counts(cli_home.db_path)
    if result.exit_code != 0:
        assert after == before, "a refused import changed the store"
        return
    summary = json.loads(result.stdout)
    written = summary["added"] + summary["revised"]
    assert after["fact_revision"] - before["fact_revision"] == written  # each row accounted for


ID_COMMANDS = [
    ["facts", "show", "{n}"], ["facts", "retract", "{n}"], ["facts", "edit", "{n}", "--answer", "B"],
    ["versions", "show", "{n}"], ["versions", "diff", "{n}", "0"], ["promote", "{n}"], ["rollback", "--to", "{n}"],
    ["round", "show", "{n}"], ["log", "--fact", "{n}"], ["log", "--version", "{n}"], ["log", "--limit", "{n}"],
    ["facts", "list", "--limit", "{n}"], ["facts", "list", "--offset", "{n}"],
]


@settings(max_examples=150, **SETTINGS)  # type: ignore[arg-type]
@given(template=st.sampled_from(ID_COMMANDS),
       n=st.one_of(st.integers().map(str), st.sampled_from(["99999999999999999999999", "-99999999999999999999999",
                                                            "9223372036854775808", "-1", "0", "²", "1.5", "", "x"])))
@example(template=["facts", "show", "{n}"], n="99999999999999999999999")
@example(template=["promote", "{n}"], n="99999999999999999999999")
def test_commands_taking_numbers(cli_home: Home, template: list[str], n: str) -> None:
    tried("locft commands with numbers")
    before = table_counts(cli_home.db_path)
    result = run_cli(cli_home, [a.replace("{n}", n) for a in template])
    if result.exit_code != 0:
        assert table_counts(cli_home.db_path) == before


def test_cli_figures(figures: dict[str, Any]) -> None:
    """Runs last in this module: the CLI input counts for docs/reliability.md."""
    figures.update({k: v for k, v in TRIED.items() if k.startswith("locft")})
