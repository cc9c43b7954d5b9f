"""Readers for fact files: plain JSONL / JSON / CSV and the three benchmark formats.

Every reader yields `FactRecord`s or `RowError`s with the 1-based line (JSONL, CSV) or item
(JSON arrays) number, so that an import can be all-or-nothing or skip the invalid rows.
No torch, no store: the CLI imports this on its fast path.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from locft.errors import InputFormatError, InvalidFactError
from locft.facts import EditFact, Probe, validate_fact

FORMATS = ("auto", "jsonl", "json", "csv", "zsre", "counterfact", "wikibigedit")
MAX_FILE_BYTES = 512 * 1024 * 1024

PLAIN_KEYS = {"prompt", "answer", "target", "subject", "paraphrases", "locality", "probes", "source", "tags"}
BENCHMARK_KEYS = {
    "zsre": {"subject", "src", "rephrase", "alt", "pred", "answers", "loc", "loc_ans", "cond"},
    "counterfact": {
        "case_id", "subject", "prompt", "target_new", "ground_truth", "rephrase_prompt",
        "locality_prompt", "locality_ground_truth",
    },
    "wikibigedit": {
        "subject", "prompt", "target_new", "rephrase_prompt", "locality_prompt", "locality_ground_truth",
    },
}
CSV_LIST_SEP = "|"


@dataclass(frozen=True)
class FactRecord:
    line: int
    fact: EditFact
    source: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


Row = FactRecord | RowError


@dataclass
class ReadResult:
    format: str
    records: list[FactRecord] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise InvalidFactError(f"{what} must be a list, got {type(value).__name__}")


def _probe(value: Any) -> Probe:
    if isinstance(value, str):
        return Probe(value)
    if isinstance(value, dict):
        unknown = set(value) - {"prompt", "answer"}
        if unknown:
            raise InvalidFactError(f"unknown probe key(s) {sorted(unknown)}; expected prompt, answer")
        if "prompt" not in value:
            raise InvalidFactError("a probe needs a 'prompt'")
        return Probe(value["prompt"], value.get("answer"))
    raise InvalidFactError(f"a probe must be a string or an object, got {type(value).__name__}")


def _plain_record(obj: Any, line: int) -> FactRecord:
    if not isinstance(obj, dict):
        raise InvalidFactError(f"expected an object, got {type(obj).__name__}")
    unknown = set(obj) - PLAIN_KEYS
    if unknown:
        raise InvalidFactError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(PLAIN_KEYS)}")
    if "prompt" not in obj:
        raise InvalidFactError("missing 'prompt'")
    if "answer" in obj and "target" in obj:
        raise InvalidFactError("give 'answer' or 'target', not both")
    answer = obj.get("answer", obj.get("target"))
    if answer is None:
        raise InvalidFactError("missing 'answer' (or 'target')")
    probes = [_probe(p) for p in _as_list(obj.get("locality"), "locality") + _as_list(obj.get("probes"), "probes")]
    tags = _as_list(obj.get("tags"), "tags")
    if not all(isinstance(t, str) for t in tags):
        raise InvalidFactError("tags must be strings")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise InvalidFactError("source must be a string")
    fact = EditFact(
        prompt=obj["prompt"],
        answer=answer,
        subject=obj.get("subject"),
        paraphrases=tuple(_as_list(obj.get("paraphrases"), "paraphrases")),
        probes=tuple(probes),
    )
    return FactRecord(line, validate_fact(fact), source, tuple(tags))


def _benchmark_record(obj: Any, line: int, fmt: str) -> FactRecord:
    if not isinstance(obj, dict):
        raise InvalidFactError(f"expected an object, got {type(obj).__name__}")
    unknown = set(obj) - BENCHMARK_KEYS[fmt]
    if unknown:
        raise InvalidFactError(f"unknown key(s) {sorted(unknown)} for format {fmt}")
    try:
        if fmt == "zsre":
            fact = EditFact(
                prompt=obj["src"], answer=obj["alt"], subject=obj.get("subject"),
                paraphrases=(obj["rephrase"],) if obj.get("rephrase") else (),
                probes=(Probe(obj["loc"], obj.get("loc_ans")),) if obj.get("loc") else (),
            )
        else:
            fact = EditFact(
                prompt=obj["prompt"], answer=obj["target_new"], subject=obj.get("subject"),
                paraphrases=(obj["rephrase_prompt"],) if obj.get("rephrase_prompt") else (),
                probes=(
                    (Probe(obj["locality_prompt"], obj.get("locality_ground_truth")),)
                    if obj.get("locality_prompt") else ()
                ),
            )
    except KeyError as exc:
        raise InvalidFactError(f"missing key {exc.args[0]!r} for format {fmt}") from None
    return FactRecord(line, validate_fact(fact), source=fmt)


def detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".jsonl":
        return "jsonl"
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return "jsonl"
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise InputFormatError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:  # as the reader below says it: a traceback here was a crash
        raise InputFormatError(f"{path}: JSON nested too deeply") from None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    keys = set(first)
    if {"src", "alt", "loc"} <= keys:
        return "zsre"
    if {"case_id", "target_new"} <= keys:
        return "counterfact"
    if {"target_new", "locality_prompt"} <= keys:
        return "wikibigedit"
    return "json"


def _rows_from_text(text: str, fmt: str, path: Path) -> Iterator[Row]:
    def convert(obj: Any, line: int) -> Row:
        try:
            if fmt in BENCHMARK_KEYS:
                return _benchmark_record(obj, line, fmt)
            return _plain_record(obj, line)
        except InvalidFactError as exc:
            return RowError(line, str(exc))

    if fmt == "jsonl":
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, RecursionError) as exc:
                yield RowError(number, f"malformed JSON: {getattr(exc, 'msg', 'nested too deeply')}")
                continue
            yield convert(obj, number)
    elif fmt == "csv":
        yield from _csv_rows(text)
    else:  # json arrays: plain or benchmark
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFormatError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        except RecursionError:
            raise InputFormatError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, list):
            raise InputFormatError(f"{path}: expected a JSON array of facts, got {type(data).__name__}")
        for number, obj in enumerate(data, start=1):
            yield convert(obj, number)


def _csv_rows(text: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield RowError(1, f"malformed CSV: {exc}")
        return
    header = [h.strip() for h in header]
    unknown = set(header) - PLAIN_KEYS
    if unknown:
        yield RowError(1, f"unknown column(s) {sorted(unknown)}; expected some of {sorted(PLAIN_KEYS)}")
        return
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield RowError(reader.line_num, f"malformed CSV: {exc}")
            return
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield RowError(line, f"{len(values)} fields; the header has {len(header)}")
            continue
        obj: dict[str, Any] = {}
        for key, value in zip(header, values):
            if value == "":
                continue
            if key in ("paraphrases", "locality", "probes", "tags"):
                obj[key] = [v for v in value.split(CSV_LIST_SEP) if v.strip()]
            else:
                obj[key] = value
        try:
            yield _plain_record(obj, line)
        except InvalidFactError as exc:
            yield RowError(line, str(exc))


def read_facts(path: str | Path, fmt: str = "auto") -> ReadResult:
    """Read every row of `path`; invalid rows become RowErrors, unreadable files raise."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputFormatError(f"{path}: no such file")
    if not path.is_file():
        raise InputFormatError(f"{path}: not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputFormatError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB; split it")
    return read_fact_bytes(path.read_bytes(), fmt, path)


def read_facts_stream(stream: BinaryIO, fmt: str = "auto", name: str = "<stdin>") -> ReadResult:
    """Like read_facts, from a byte stream (`locft import -`). With no file name to go by, auto
    detects JSON arrays and benchmark files by content and takes anything else as JSONL: give
    --format csv for CSV."""
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    raw = stream.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise InputFormatError(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB; split it")
    return read_fact_bytes(raw, fmt, Path(name))


def read_fact_bytes(raw: bytes, fmt: str, path: Path) -> ReadResult:
    """The rows of `raw`, the contents of `path` (named in messages; its suffix guides auto)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFormatError(f"{path}: line {line}: not valid UTF-8 (byte {exc.start})") from None
    if fmt == "auto":
        fmt = detect_format(path, text)
    result = ReadResult(format=fmt)
    for row in _rows_from_text(text, fmt, path):
        if isinstance(row, RowError):
            result.errors.append(row)
        else:
            result.records.append(row)
    return result


def load_edit_facts(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[EditFact]:
    """Benchmark helper: the first `limit` valid facts of a file; any invalid row is an error."""
    result = read_facts(path, fmt)
    if result.errors:
        raise InputFormatError(f"{path}: {len(result.errors)} invalid row(s), first: {result.errors[0]}")
    records = result.records[:limit] if limit is not None else result.records
    return [r.fact for r in records]
