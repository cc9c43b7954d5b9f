from __future__ import annotations

import json
from pathlib import Path

import pytest

from locft.errors import InputFormatError
from locft.readers import read_facts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(("name", "fmt"), [("zsre_dev.json", "zsre"), ("counterfact_dev.json", "counterfact"),
                                           ("wikibigedit_dev.json", "wikibigedit")])
def test_benchmark_files_are_detected_and_read(name: str, fmt: str) -> None:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    result = read_facts(path)
    assert result.format == fmt
    assert len(result.records) == 2000 and not result.errors
    fact = result.records[0].fact
    assert fact.prompt and fact.answer and len(fact.paraphrases) == 1 and len(fact.probes) == 1


def test_zsre_mapping(tmp_path: Path) -> None:
    item = {"subject": "S", "src": "Q?", "rephrase": "Q2?", "alt": "new", "pred": "p", "answers": ["old"],
            "loc": "nq question: x", "loc_ans": "y", "cond": "c"}
    (tmp_path / "z.json").write_text(json.dumps([item]))
    fact = read_facts(tmp_path / "z.json").records[0].fact
    assert ((fact.prompt, fact.answer, fact.paraphrases, fact.probes[0].prompt)
            == ("Q?", "new", ("Q2?",), "nq question: x"))


def test_jsonl_errors_carry_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "a?", "answer": "b"}),
        "{not json",
        json.dumps({"prompt": " ", "answer": "b"}),
        json.dumps({"prompt": "c?", "answer": "d", "colour": "red"}),
        "",
        json.dumps({"prompt": "e?", "target": "f", "paraphrases": ["e2?"], "locality": [{"prompt": "g?"}]}),
    ]
    (tmp_path / "f.jsonl").write_text("\n".join(lines))
    result = read_facts(tmp_path / "f.jsonl")
    assert [r.line for r in result.records] == [1, 6]
    assert [(e.line, e.message.split()[0]) for e in result.errors] == [(2, "malformed"), (3, "prompt"), (4, "unknown")]
    assert result.records[1].fact.probes[0].prompt == "g?"


def test_csv_with_list_columns(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text('prompt,answer,paraphrases,tags\n"Q, really?",A,Q1?|Q2?,x|y\nQ3?,,,\n')
    result = read_facts(tmp_path / "f.csv")
    assert result.records[0].fact.paraphrases == ("Q1?", "Q2?") and result.records[0].tags == ("x", "y")
    assert result.errors[0].line == 3 and "answer" in result.errors[0].message


def test_csv_unknown_column(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("prompt,answer,bogus\nq,a,b\n")
    assert "bogus" in read_facts(tmp_path / "f.csv").errors[0].message


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe[bad", "UTF-8"), (b'{"prompt": "a"}', None), (b"[1, 2", "not valid JSON")],
)
def test_unreadable_files(tmp_path: Path, content: bytes, message: str | None) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(content)
    if message is None:  # a lone object is JSONL with one invalid row, not a crash
        assert read_facts(path).errors
        return
    with pytest.raises(InputFormatError, match=message):
        read_facts(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="no such file"):
        read_facts(tmp_path / "nope.jsonl")


def test_control_characters_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f.jsonl").write_text(json.dumps({"prompt": "a\x00b", "answer": "c"}))
    assert "control character" in read_facts(tmp_path / "f.jsonl").errors[0].message


def test_surrounding_whitespace_is_stripped_not_refused(tmp_path: Path) -> None:
    (tmp_path / "f.jsonl").write_text(json.dumps({"prompt": " Q?\n", "answer": "Paris\n"}))
    fact = read_facts(tmp_path / "f.jsonl").records[0].fact
    assert (fact.prompt, fact.answer) == ("Q?", "Paris")
