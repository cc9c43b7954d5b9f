"""The store commands through click's runner: output, exit codes, and the store after each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from locft.cli.main import cli
from locft.config import CONFIG_TEMPLATE
from locft.errors import ERROR_CODES, ConfigError, ConflictError, LocftError, NotFoundError, StoreError, error_code
from locft.home import DaemonInfo, Home, write_daemon_info
from locft.store import Store
from tests.store.helpers import new_version


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result


def fails(*args: str, match: str, error: type[LocftError] | None = None) -> Result:
    """A refused command: the exit status of its error class (`error`, when given; one of the
    documented ones otherwise), ONE line `error: ...` naming the problem, no traceback."""
    result = run(*args, ok=False)
    statuses = {status for _, status in ERROR_CODES.values()}
    assert result.exit_code == (error_code(error)[1] if error else result.exit_code) in statuses, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert match in errors[0], errors[0]
    return result


@pytest.fixture
def initialized(home: Home) -> Home:
    run("init")
    return home


def store_state(home: Home) -> tuple[object, ...]:
    with Store.open(home) as store:
        return (
            [(f.revision_id, f.fact) for f in store.active_facts()],
            [e.id for e in store.list_events(limit=None)],
            store.promoted_version().id,
        )


def test_init_creates_the_home_and_is_idempotent(home: Home) -> None:
    result = run("init")
    assert "Initialized" in result.output and "version 0" in result.output
    assert home.config_path.read_text() == CONFIG_TEMPLATE
    assert home.db_path.exists() and home.snapshots_dir.is_dir() and home.run_dir.is_dir()
    assert home.cache_dir.is_dir() and home.logs_dir.is_dir()
    home.config_path.write_text(CONFIG_TEMPLATE + "\n# my edit\n")
    again = run("init", "--json")
    data = json.loads(again.stdout)
    assert data["migrations_applied"] == [] and data["promoted_version"] == 0
    assert home.config_path.read_text().endswith("# my edit\n")  # never overwritten


def test_commands_before_init_say_to_run_init(home: Home) -> None:
    for args in (("add-fact", "Q?", "A"), ("facts", "list"), ("status",), ("versions", "list")):
        fails(*args, match="locft init", error=StoreError)
    assert not home.db_path.exists()


def test_add_fact_duplicate_conflict_replace(initialized: Home) -> None:
    assert run("add-fact", "Who is the CEO of Acme?", "Jane Doe").output.strip() == "added fact 1"
    dup = run("add-fact", "who is the CEO of Acme", "jane doe")
    assert "duplicate: fact 1" in dup.output
    before = store_state(initialized)
    fails("add-fact", "Who is the CEO of Acme?", "John Roe", match="conflicts with fact 1", error=ConflictError)
    assert store_state(initialized) == before
    out = run("add-fact", "Who is the CEO of Acme?", "John Roe", "--replace", "--json")
    assert json.loads(out.stdout) == {"status": "revised", "fact_id": 1, "revision_id": 2,
                                      "previous_answer": "Jane Doe"}


def test_add_fact_options_are_stored(initialized: Home) -> None:
    run("add-fact", "The capital of Atlantis is", "Poseidonia", "--subject", "Atlantis",
        "--paraphrase", "Atlantis's capital is", "--paraphrase", "Capital of Atlantis?",
        "--probe", "The capital of France is=Paris", "--probe", "Is 1=1 true?=", "--probe", "Who wrote Hamlet?",
        "--source", "atlas", "--tag", "geo", "--tag", "myth", "--author", "ann")
    shown = json.loads(run("facts", "show", "1", "--json").stdout)
    current = shown["current"]
    assert current["subject"] == "Atlantis" and current["author"] == "ann"
    assert current["paraphrases"] == ["Atlantis's capital is", "Capital of Atlantis?"]
    assert current["probes"] == [
        {"prompt": "The capital of France is", "answer": "Paris"},
        {"prompt": "Is 1=1 true?", "answer": None},
        {"prompt": "Who wrote Hamlet?", "answer": None},
    ]
    assert (current["source"], current["tags"]) == ("atlas", ["geo", "myth"])


@pytest.mark.parametrize(
    "prompt, answer, match",
    [
        ("", "A", "prompt is empty"),
        ("   ", "A", "prompt is empty"),
        ("Q?", " \t ", "answer is empty"),
        ("Q" * 2001, "A", "limit is 2000"),
        ("Q?", "A" * 301, "limit is 300"),
        ("Q\x07?", "A", "control character"),
        ("Q?", "line\nbreak", "control character"),
        ("Q\udcff?", "A", "not valid UTF-8"),  # how Python hands over an invalid UTF-8 argument
    ],
)
def test_add_fact_bad_input_is_one_line_and_changes_nothing(initialized: Home, prompt: str, answer: str,
                                                             match: str) -> None:
    run("add-fact", "existing?", "yes")
    before = store_state(initialized)
    fails("add-fact", prompt, answer, match=match)
    assert store_state(initialized) == before


def test_facts_list_show_edit_retract(initialized: Home) -> None:
    run("add-fact", "Who leads Acme?", "Jane")
    run("add-fact", "Capital of Atlantis?", "Poseidonia")
    listed = run("facts", "list")
    assert "Who leads Acme? -> Jane" in listed.output and "Capital of Atlantis? -> Poseidonia" in listed.output
    data = json.loads(run("facts", "list", "--search", "acme", "--json").stdout)
    assert [f["fact_id"] for f in data] == [1]

    edited = run("facts", "edit", "1", "--answer", "John", "--note", "new CEO")
    assert "revision 2" in edited.output
    assert "nothing changed" in run("facts", "edit", "1", "--answer", "John").output
    shown = run("facts", "show", "1")
    assert "r1" in shown.output and "r2" in shown.output and "new CEO" in shown.output

    pending = json.loads(run("facts", "list", "--pending", "--json").stdout)
    assert {(f["fact_id"], f["pending"]) for f in pending} == {(1, "added"), (2, "added")}

    assert "retracted fact 2" in run("facts", "retract", "2", "--reason", "myth").output
    assert [f["fact_id"] for f in json.loads(run("facts", "list", "--retracted", "--json").stdout)] == [2]
    assert [f["fact_id"] for f in json.loads(run("facts", "list", "--json").stdout)] == [1]
    assert len(json.loads(run("facts", "list", "--all", "--json").stdout)) == 2
    fails("facts", "retract", "2", match="already retracted")
    assert "no retracted facts matching 'zzz'" in run("facts", "list", "--retracted", "--search", "zzz").output


def test_unknown_fact_ids(initialized: Home) -> None:
    for args in (("facts", "show", "7"), ("facts", "retract", "7"), ("facts", "edit", "7", "--answer", "x")):
        fails(*args, match="no fact with id 7", error=NotFoundError)
    result = run("facts", "show", "seven", ok=False)
    assert result.exit_code == 2 and "not a valid integer" in result.output  # click's own usage error
    usage = run("facts", "edit", "1", ok=False)
    assert usage.exit_code == 2 and "nothing to change" in usage.output


def test_versions_promote_rollback(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1")
    with Store.open(initialized) as store:
        good = new_version(store, "v1", passed=True)
        bad = new_version(store, "v2", passed=False)
    listed = run("versions", "list")
    assert "rejected" in listed.output and "candidate" in listed.output and "promoted" in listed.output
    states = {v["id"]: v["state"] for v in json.loads(run("versions", "list", "--json").stdout)}
    assert states == {0: "promoted", good.id: "candidate", bad.id: "rejected"}

    before = store_state(initialized)
    fails("promote", str(bad.id), match="failed its gates")
    fails("promote", "9", match="no version 9", error=NotFoundError)
    assert store_state(initialized) == before

    assert "promoted version 1; was version 0" in run("promote", "1", "--reason", "good").output
    assert "already promoted" in run("promote", "1").output
    assert "forced" in run("promote", str(bad.id), "--force").output
    assert "rolled back to version 1" in run("rollback").output
    assert "rolled back to version 0" in run("rollback", "--to", "0").output
    fails("rollback", "--to", "0", match="already promoted")

    shown = run("versions", "show", str(bad.id))
    assert "FAILED" in shown.output and "reliability 0.50 < 0.95" in shown.output and "forced" in shown.output
    detail = json.loads(run("versions", "show", "1", "--json").stdout)
    assert detail["fact_count"] == 1 and detail["edit_config"]["lr"] == 0.005 and detail["state"] == "retired"
    assert [p["action"] for p in detail["promotions"]] == ["promote", "rollback"]
    fails("versions", "show", "9", match="no version 9")


def test_versions_diff(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1")
    run("add-fact", "Q2?", "A2")
    with Store.open(initialized) as store:
        new_version(store, "v1", passed=True)
    run("facts", "edit", "1", "--answer", "B1")
    run("facts", "retract", "2")
    run("add-fact", "Q3?", "A3")
    with Store.open(initialized) as store:
        new_version(store, "v2", passed=True)
    text = run("versions", "diff", "1", "2").output
    assert "1 added, 1 removed, 1 changed" in text and "A1 -> B1" in text
    data = json.loads(run("versions", "diff", "1", "2", "--json").stdout)
    assert [f["fact_id"] for f in data["added"]] == [3] and [f["fact_id"] for f in data["removed"]] == [2]
    fails("versions", "diff", "1", "5", match="no version 5")


def test_status_shows_promoted_facts_rounds_and_daemon(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1")
    text = run("status").output
    assert "version 0 (the base model)" in text and "1 active, 1 pending" in text
    assert "daemon" in text and "not running" in text
    with Store.open(initialized) as store:
        r = store.start_round("request")
        store.finish_round(r.id, "skipped")
    write_daemon_info(initialized, DaemonInfo(pid=os.getpid(), started_at="2026-01-01T00:00:00+00:00",
                                              next_round_at="2026-01-02T02:00:00+00:00", api_url="http://127.0.0.1:8765"))
    text = run("status").output
    assert f"pid {os.getpid()}" in text and "2026-01-02T02:00:00" in text and "http://127.0.0.1:8765" in text
    assert "#1 (request) skipped" in text
    data = json.loads(run("status", "--json").stdout)
    assert data["facts"] == {"active": 1, "pending": 1, "retracted": 0} and data["daemon"]["pid"] == os.getpid()
    assert data["last_round"]["outcome"] == "skipped" and data["promoted"]["id"] == 0
    write_daemon_info(initialized, DaemonInfo(pid=2**22 + 12345, started_at="x"))  # no such process
    assert "not running" in run("status").output


def test_status_and_round_show_say_what_a_running_round_is_doing(initialized: Home) -> None:
    from locft.rounds.live import PROGRESS_FILE

    with Store.open(initialized) as store:
        r = store.start_round("request")
    text = run("round", "show", str(r.id)).output
    assert "now: no progress reported" in text  # a foreground round, or a worker that has not written yet
    progress = {"pid": os.getpid(), "phase": "evaluate", "done": 576, "total": 981, "detail": "locality",
                "loss": None, "updated_at": 0}
    (initialized.run_dir / PROGRESS_FILE).write_text(json.dumps(progress))
    assert "now: evaluate 576/981 (locality)" in run("round", "show", str(r.id)).output
    assert any(line.split() == ["now", "evaluate", "576/981", "(locality)"]
               for line in run("status").output.splitlines())
    assert json.loads(run("status", "--json").stdout)["round_progress"]["done"] == 576
    (initialized.run_dir / PROGRESS_FILE).write_text(json.dumps(progress | {"pid": 2**22 + 12345}))  # writer gone
    assert "evaluate" not in run("status").output
    with Store.open(initialized) as store:
        store.finish_round(r.id, "skipped")
    (initialized.run_dir / PROGRESS_FILE).write_text(json.dumps(progress))
    assert "evaluate" not in run("status").output and "evaluate" not in run("round", "show", str(r.id)).output


def test_export_checks_the_version_before_loading_a_model(initialized: Home, tmp_path: Path) -> None:
    fails("export", "4", str(tmp_path / "out"), match="no version 4")
    assert not (tmp_path / "out").exists()


def test_export_calls_the_engine_with_the_snapshot(initialized: Home, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls = []

    def export_checkpoint(home: Path, model_cfg: object, snapshot_dir: Path | None, out_dir: Path) -> Path:
        calls.append((home, snapshot_dir, out_dir))
        return out_dir

    fake = types.ModuleType("locft.engine.snapshot")
    fake.export_checkpoint = export_checkpoint  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "locft.engine.snapshot", fake)
    monkeypatch.setitem(sys.modules, "locft.engine", types.ModuleType("locft.engine"))
    run("add-fact", "Q?", "A")
    with Store.open(initialized) as store:
        v = new_version(store, "v1", passed=True)
    run("export", "0", str(tmp_path / "base"))
    run("export", str(v.id), str(tmp_path / "v1"))
    assert calls == [(initialized.root, None, tmp_path / "base"),
                     (initialized.root, initialized.snapshots_dir / "v1", tmp_path / "v1")]
    (initialized.snapshots_dir / "v1" / "tensors.safetensors").write_bytes(b"bit rot")
    fails("export", str(v.id), str(tmp_path / "v1b"), match="corrupted")
    assert len(calls) == 2


def test_log_shows_who_did_what(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1", "--author", "ann")
    run("facts", "edit", "1", "--answer", "B1", "--author", "bob")
    run("facts", "retract", "1", "--author", "cat", "--reason", "wrong")
    text = run("log", "--fact", "1").output
    lines = text.splitlines()
    assert "fact.retracted" in lines[1] and "cat" in lines[1] and 'reason="wrong"' in lines[1]
    assert "fact.revised" in lines[2] and "bob" in lines[2] and "fact.added" in lines[3] and "ann" in lines[3]
    data = json.loads(run("log", "--kind", "fact.", "--json").stdout)
    assert [e["kind"] for e in data] == ["fact.retracted", "fact.revised", "fact.added"]
    assert json.loads(run("log", "--since", "2999-01-01", "--json").stdout) == []
    assert "store.created" in run("log", "--until", "2999-01-01").output


def test_versions_at_tells_what_was_served_when(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1")
    with Store.open(initialized) as store:
        new_version(store, "v1", passed=True)
    run("promote", "1", "--reason", "ship it")
    now = json.loads(run("versions", "at", "2999-01-01", "--json").stdout)
    assert now["version"]["id"] == 1 and now["promotion"]["reason"] == "ship it"
    assert "served version was 1" in run("versions", "at", "2999-01-01").output
    fails("versions", "at", "2000-01-01", match="did not exist yet")


def test_a_corrupt_database_is_one_line(initialized: Home) -> None:
    initialized.db_path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(initialized.db_path) + suffix).unlink(missing_ok=True)
    fails("status", match="file is not a database")
    fails("add-fact", "Q?", "A", match="file is not a database")


def test_a_broken_config_is_one_line(initialized: Home) -> None:
    initialized.config_path.write_text("[store]\nkeep_promotd = 3\n")
    fails("status", match="unknown key(s) keep_promotd", error=ConfigError)


def test_versions_show_renders_the_verdict_checks(initialized: Home) -> None:
    run("add-fact", "Q1?", "A1")
    with Store.open(initialized) as store:
        v = new_version(store, "v1")
        store.record_gate_result(v.id, passed=False, metrics={"reliability": 0.5, "generalization": None}, report={
            "verdict": {"passed": False, "checks": [
                {"name": "reliability", "passed": False, "gated": True, "detail": "reliability 0.5 < 0.95"},
                {"name": "generalization", "passed": True, "gated": False, "detail": "generalization not measured"},
            ]},
        })
    text = run("versions", "show", str(v.id)).output
    assert "FAIL reliability 0.5 < 0.95" in text and "info generalization not measured" in text
    assert "reliability          0.5000" in text and "generalization       null" not in text
