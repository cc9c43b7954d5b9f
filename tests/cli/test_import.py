"""`locft import`: formats, line-numbered problems, all-or-nothing, --skip-invalid, --replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from locft.home import Home
from locft.store import Store
from tests.cli.test_store_commands import fails, run, store_state


@pytest.fixture
def initialized(home: Home) -> Home:
    run("init")
    return home


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def prompts(home: Home) -> list[str]:
    with Store.open(home) as store:
        return [f.fact.prompt for f in store.active_facts()]


def test_import_jsonl_with_duplicates(initialized: Home, tmp_path: Path) -> None:
    run("add-fact", "Existing?", "yes")
    f = write(tmp_path / "facts.jsonl", jsonl(
        {"prompt": "A?", "answer": "a", "paraphrases": ["A again?"], "tags": ["t"]},
        {"prompt": "B?", "target": "b", "locality": [{"prompt": "2+2=", "answer": "4"}], "source": "s"},
        {"prompt": "existing", "answer": "Yes"},
        "",
        {"prompt": "a?", "answer": "A."},
    ))
    result = run("import", str(f))
    assert "2 added, 0 revised, 2 duplicate, 0 conflicting, 0 invalid" in result.stdout
    assert "line 3: duplicate of fact 1\n" in result.stderr and "line 5: duplicate of fact 2 (line 1)" in result.stderr
    assert prompts(initialized) == ["Existing?", "A?", "B?"]


def test_import_is_all_or_nothing_with_line_numbers(initialized: Home, tmp_path: Path) -> None:
    run("add-fact", "Existing?", "yes")
    before = store_state(initialized)
    f = write(tmp_path / "facts.jsonl", jsonl(
        {"prompt": "A?", "answer": "a"},
        '{"prompt": "B?", "answer": ',
        {"prompt": "C?", "answer": "c", "colour": "red"},
        {"prompt": "Existing?", "answer": "no"},
        {"prompt": "   ", "answer": "d"},
        {"prompt": "E?", "answer": "e\u0000"},
    ))
    result = fails("import", str(f), match="nothing imported: 4 invalid and 1 conflicting row(s), first line 2")
    err = result.stderr
    assert "line 2: malformed JSON" in err and "line 3: unknown key(s) ['colour']" in err
    assert "line 4: 'Existing?' conflicts with fact 1" in err and "line 5: prompt is empty" in err
    assert "line 6: answer contains the control character" in err
    assert "NOT imported" in result.stdout
    assert store_state(initialized) == before


def test_import_skip_invalid_and_replace(initialized: Home, tmp_path: Path) -> None:
    run("add-fact", "Existing?", "yes")
    f = write(tmp_path / "facts.jsonl", jsonl(
        {"prompt": "A?", "answer": "a"}, "not json", {"prompt": "Existing?", "answer": "no"},
    ))
    out = json.loads(run("import", str(f), "--skip-invalid", "--json").stdout)
    assert out["written"] and out["added"] == 1 and [i["line"] for i in out["invalid"]] == [2]
    assert [(c["line"], c["fact_id"]) for c in out["conflicts"]] == [(3, 1)]
    assert prompts(initialized) == ["Existing?", "A?"]
    g = write(tmp_path / "again.jsonl", jsonl({"prompt": "Existing?", "answer": "no"}))
    assert "1 revised" in run("import", str(g), "--replace").stdout
    with Store.open(initialized) as store:
        assert [r.answer for r in store.get_fact(1).revisions] == ["yes", "no"]


def test_import_csv(initialized: Home, tmp_path: Path) -> None:
    f = write(tmp_path / "sheet.csv", 'prompt,answer,paraphrases,tags\n"Q1, with comma?",A1,p1|p2,x\nQ2?,A2,,\n')
    assert "2 added" in run("import", str(f)).stdout
    with Store.open(initialized) as store:
        first = store.active_facts()[0].fact
    assert first.prompt == "Q1, with comma?" and first.paraphrases == ("p1", "p2")
    bad = write(tmp_path / "bad.csv", "prompt,answer,colour\nQ?,A,red\n")
    fails("import", str(bad), match="line 1: unknown column(s) ['colour']")
    ragged = write(tmp_path / "ragged.csv", "prompt,answer\nQ3?,A3,extra\nQ4?,A4\n")
    fails("import", str(ragged), match="line 2: 3 fields; the header has 2; fix them, or --skip-invalid to import "
                                       "the 1 other row(s)")
    unclosed = write(tmp_path / "unclosed.csv", 'prompt,answer\nQ5?,A5\n"Q6?,A6\n')
    fails("import", str(unclosed), match="line 3: 1 fields; the header has 2")
    assert len(prompts(initialized)) == 2


def test_import_benchmark_format_is_detected(initialized: Home, tmp_path: Path) -> None:
    rows = [
        {"subject": f"S{i}", "src": f"Which river contains S{i}?", "pred": "X", "rephrase": f"S{i} is in which river?",
         "alt": f"River {i}", "answers": ["X"], "loc": "nq question: who?", "loc_ans": "me", "cond": "c"}
        for i in range(5)
    ]
    f = write(tmp_path / "zsre_like.json", json.dumps(rows))
    result = run("import", str(f))
    assert "(zsre): 5 added" in result.stdout
    with Store.open(initialized) as store:
        fact = store.active_facts()[0].fact
    assert fact.paraphrases == ("S0 is in which river?",) and fact.probes[0].answer == "me"


def test_import_unreadable_files(initialized: Home, tmp_path: Path) -> None:
    before = store_state(initialized)
    fails("import", str(tmp_path / "missing.jsonl"), match="no such file")
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "A?", "answer": "a"}\n{"prompt": "Caf\xe9?", "answer": "b"}\n')
    fails("import", str(bad_utf8), match="line 2: not valid UTF-8")
    broken = write(tmp_path / "broken.json", '[{"prompt": "A?", "answer": "a"},\n  {"prompt": ]')
    fails("import", str(broken), match="not valid JSON (line 2")
    fails("import", str(write(tmp_path / "f.jsonl", "{}\n")), match="line 1: missing 'prompt'")
    result = run("import", str(write(tmp_path / "g.jsonl", "")), "--format", "nope", ok=False)
    assert result.exit_code == 2
    assert store_state(initialized) == before
