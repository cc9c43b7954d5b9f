"""The automation contract: --json errors, exit statuses per error class, --home, stdin import,
`locft config check` and the same problems in `locft status`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from locft.cli.main import cli
from locft.errors import (
    ERROR_CODES,
    INTERNAL,
    USAGE,
    ConfigError,
    ConflictError,
    InputFormatError,
    NotFoundError,
    error_code,
)
from locft.home import Home
from locft.store import Store

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin)


def json_error(result: Result, cls: type[Exception]) -> dict[str, object]:
    """Exactly one JSON document on stdout, the error object of `cls`, and its exit status."""
    code, status = error_code(cls)
    assert result.exit_code == status, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"error"} and data["error"]["code"] == code, data
    assert "Traceback" not in result.output
    return data["error"]


@pytest.fixture
def initialized(home: Home) -> Home:
    assert invoke("init").exit_code == 0
    return home


def test_codes_and_statuses_are_distinct_where_they_must_be() -> None:
    codes = [code for code, _ in ERROR_CODES.values()] + [USAGE[0], INTERNAL[0]]
    assert len(codes) == len(set(codes))  # a code names one class
    for code in codes:
        assert re.fullmatch(r"[a-z_]+", code)
    statuses = {status for _, status in ERROR_CODES.values()}
    assert 0 not in statuses and USAGE[1] not in statuses and INTERNAL[1] not in statuses


def test_the_readme_documents_every_code_with_its_status() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code, status in [*ERROR_CODES.values(), USAGE, INTERNAL]:
        assert re.search(rf"\|\s*{status}\s*\|\s*`{code}`", readme), f"README lacks the row for {code} ({status})"


def test_errors_under_json_are_one_object_on_stdout_with_a_stable_code(initialized: Home) -> None:
    assert invoke("add-fact", "Who is the CEO of Acme?", "Jane Doe").exit_code == 0
    error = json_error(invoke("add-fact", "Who is the CEO of Acme?", "John Roe", "--json"), ConflictError)
    assert "conflicts with fact 1" in str(error["message"])
    error = json_error(invoke("facts", "show", "99", "--json"), NotFoundError)
    assert str(error["message"]).startswith("no fact with id 99")
    # without --json: one line on stderr, the same status
    plain = invoke("facts", "show", "99")
    assert plain.exit_code == error_code(NotFoundError)[1] and plain.stdout == ""
    assert plain.stderr.startswith("error: no fact with id 99") and len(plain.stderr.splitlines()) == 1


def test_usage_errors_under_json_are_objects_too(initialized: Home) -> None:
    result = invoke("facts", "show", "not-a-number", "--json")
    assert result.exit_code == USAGE[1]
    assert json.loads(result.stdout)["error"]["code"] == "usage"


def test_a_failed_import_under_json_carries_its_report(initialized: Home) -> None:
    rows = '{"prompt": "Q1?", "answer": "A"}\n{"prompt": "no answer"}\n'
    error = json_error(invoke("import", "-", "--json", stdin=rows), InputFormatError)
    details = error["details"]
    assert isinstance(details, dict) and details["written"] is False
    assert details["invalid"] == [{"line": 2, "message": "missing 'answer' (or 'target')", "fact_id": None}]


def test_import_reads_standard_input(initialized: Home) -> None:
    example = (ROOT / "examples" / "facts.jsonl").read_text(encoding="utf-8")
    result = invoke("import", "-", "--json", stdin=example)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 10
    csv = invoke("import", "-", "--format", "csv", stdin="prompt,answer\nWho made Beacon 8?,Northwind Labs\n")
    assert csv.exit_code == 0 and "1 added" in csv.stdout
    with Store.open(initialized) as store:
        assert store.count_facts().active == 11


def test_a_zero_width_space_does_not_make_another_fact(initialized: Home) -> None:
    assert invoke("add-fact", "Who is the CEO of Acme?", "Jane Doe").exit_code == 0
    again = invoke("add-fact", "Who is the\u200b CEO of Acme?\ufeff", "Jane\u200b Doe")
    assert again.exit_code == 0 and "duplicate: fact 1" in again.stdout
    conflict = invoke("add-fact", "Who is the CEO\u200b of Acme?", "John Roe")
    assert conflict.exit_code == error_code(ConflictError)[1]
    with Store.open(initialized) as store:
        assert [f.fact.prompt for f in store.active_facts()] == ["Who is the CEO of Acme?"]


def test_home_option_overrides_the_environment(home: Home, tmp_path: Path) -> None:
    other = tmp_path / "other-home"
    assert invoke("--home", str(other), "init").exit_code == 0
    assert invoke("--home", str(other), "add-fact", "Q?", "A").exit_code == 0
    status = json.loads(invoke("--home", str(other), "status", "--json").stdout)
    assert status["home"] == str(other) and status["facts"]["active"] == 1
    assert not home.db_path.exists()  # $LOCFT_HOME (the fixture's) was not touched


@pytest.mark.parametrize("how", ["env", "option"])
def test_a_file_as_the_home_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    if how == "env":
        monkeypatch.setenv("LOCFT_HOME", str(afile))
        args: tuple[str, ...] = ("status", "--json")
    else:
        args = ("--home", str(afile), "status", "--json")
    error = json_error(invoke(*args), ConfigError)
    assert "is not a directory" in str(error["message"])


BAD_CONFIG = """\
[schedule]
cron = "99 2 * * *"
[gates]
capability_tasks = ["arc_easy", "no_such_task"]
[model]
path = "/nonexistent/model"
"""


def test_config_check_finds_what_a_round_and_the_daemon_would_hit(initialized: Home) -> None:
    ok = invoke("config", "check", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    initialized.config_path.write_text(BAD_CONFIG)
    error = json_error(invoke("config", "check", "--json"), ConfigError)
    problems = {p["what"]: p["message"] for p in error["details"]["problems"]}  # type: ignore[index]
    assert set(problems) == {"schedule.cron", "gates.capability_tasks", "model.path"}
    assert "not a valid cron expression" in problems["schedule.cron"]
    assert "unknown capability task 'no_such_task'" in problems["gates.capability_tasks"]
    assert "does not exist" in problems["model.path"]
    # `locft status` shows the same problems (and still reports the rest)
    status = invoke("status", "--json")
    assert status.exit_code == 0
    shown = json.loads(status.stdout)["problems"]
    assert all(any(what in line for line in shown) for what in problems)
    text = invoke("status").stdout
    assert text.count("PROBLEM") == 3


def test_config_check_reads_the_model_without_loading_it(initialized: Home, tmp_path: Path) -> None:
    def problems_for(path: Path) -> list[str]:
        initialized.config_path.write_text(f'[model]\npath = "{path}"\n')
        result = invoke("config", "check", "--json")
        if result.exit_code == 0:
            return []
        return [p["message"] for p in json.loads(result.stdout)["error"]["details"]["problems"]]

    model = tmp_path / "model"
    model.mkdir()
    assert problems_for(model) == [f"{model} is not a Hugging Face model directory (no config.json)"]
    (model / "config.json").write_text("{not json")
    assert "is not readable JSON" in problems_for(model)[0]
    (model / "config.json").write_text('{"model_type": "llama"}')
    assert problems_for(model) == [f"{model} has no *.safetensors or *.bin weight files"]
    (model / "model.safetensors").write_bytes(b"")  # never opened: the check reads no weights
    assert problems_for(model) == []
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"NOPE" + b"\0" * 16)
    assert "is not a GGUF file" in problems_for(gguf)[0]
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    assert problems_for(gguf) == []


def test_config_check_names_a_missing_database_driver(initialized: Home) -> None:
    initialized.config_path.write_text('[store]\ndatabase_url = "nosuchdb://u@h/x"\n')
    error = json_error(invoke("config", "check", "--json"), ConfigError)
    messages = [p["message"] for p in error["details"]["problems"]]  # type: ignore[index]
    assert len(messages) == 1 and "unknown database backend" in messages[0]


def test_a_bug_under_json_is_still_one_object_with_the_internal_code(initialized: Home,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import locft.checks

    def broken(home: Home) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(locft.checks, "check_home", broken)
    result = invoke("config", "check", "--json")
    assert result.exit_code == INTERNAL[1] == 70
    assert json.loads(result.stdout) == {"error": {"code": "internal", "message": "RuntimeError: a bug"}}
    assert "Traceback" in result.stderr  # for the bug report
    plain = invoke("config", "check")  # without --json: the traceback as before
    assert isinstance(plain.exception, RuntimeError)
