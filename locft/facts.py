"""The edit request as the engine sees it, and the validation every entry point applies."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from locft.errors import InvalidFactError

# Documented limits (README, "Facts"): long enough for real questions, short enough that one
# fact cannot blow up a training batch.
MAX_PROMPT_CHARS = 2000
MAX_ANSWER_CHARS = 300
MAX_PARAPHRASES = 20
MAX_PROBES = 20
MAX_SUBJECT_CHARS = 300


@dataclass(frozen=True)
class Probe:
    """An unrelated prompt whose answer must not change. `answer` None: the base model's answer."""

    prompt: str
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer}


@dataclass(frozen=True)
class EditFact:
    """prompt -> new answer, with optional paraphrases (generalization) and probes (locality)."""

    prompt: str
    answer: str
    subject: str | None = None
    paraphrases: tuple[str, ...] = ()
    probes: tuple[Probe, ...] = ()
    fact_id: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "subject": self.subject,
            "paraphrases": list(self.paraphrases),
            "probes": [p.to_dict() for p in self.probes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditFact:
        probes = tuple(
            Probe(p["prompt"], p.get("answer")) if isinstance(p, dict) else Probe(str(p))
            for p in data.get("probes") or ()
        )
        return cls(
            prompt=data["prompt"],
            answer=data["answer"],
            subject=data.get("subject"),
            paraphrases=tuple(data.get("paraphrases") or ()),
            probes=probes,
            fact_id=data.get("fact_id"),
        )


def strip_invisible(text: str) -> str:
    """`text` without format characters (Unicode category Cf: zero-width space and joiners, BOM,
    soft hyphen, direction marks). They do not show, so two prompts that differ only by one
    would be two facts that look the same; pasted text carries them often."""
    if text.isascii():  # the common case: no Cf character is ASCII
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _check_text(what: str, value: object, limit: int, allow_newlines: bool) -> str:
    if not isinstance(value, str):
        raise InvalidFactError(f"{what} must be a string, got {type(value).__name__}")
    value = strip_invisible(value).strip()  # surrounding whitespace (a trailing newline) is not content
    if not value:
        raise InvalidFactError(f"{what} is empty")
    if len(value) > limit:
        raise InvalidFactError(f"{what} is {len(value)} characters; the limit is {limit}")
    for ch in value:
        cat = unicodedata.category(ch)
        if cat == "Cs":
            raise InvalidFactError(f"{what} is not valid UTF-8 (lone surrogate {ch!r})")
        if cat == "Cc" and not (allow_newlines and ch in "\n\t"):
            raise InvalidFactError(f"{what} contains the control character {ch!r}")
    return value


def validate_fact(fact: EditFact) -> EditFact:
    """Return the fact with surrounding whitespace stripped, or raise InvalidFactError."""
    prompt = _check_text("prompt", fact.prompt, MAX_PROMPT_CHARS, allow_newlines=True)
    answer = _check_text("answer", fact.answer, MAX_ANSWER_CHARS, allow_newlines=False)
    subject = None
    if fact.subject is not None and str(fact.subject).strip():
        subject = _check_text("subject", fact.subject, MAX_SUBJECT_CHARS, allow_newlines=False)
    if len(fact.paraphrases) > MAX_PARAPHRASES:
        raise InvalidFactError(f"{len(fact.paraphrases)} paraphrases; the limit is {MAX_PARAPHRASES}")
    if len(fact.probes) > MAX_PROBES:
        raise InvalidFactError(f"{len(fact.probes)} probes; the limit is {MAX_PROBES}")
    paraphrases = tuple(
        _check_text(f"paraphrase {i + 1}", p, MAX_PROMPT_CHARS, allow_newlines=True)
        for i, p in enumerate(fact.paraphrases)
    )
    probes = tuple(
        Probe(
            _check_text(f"probe {i + 1} prompt", p.prompt, MAX_PROMPT_CHARS, allow_newlines=True),
            # a probe answer is a reference (e.g. NQ long answers), so the prompt limit applies
            None if p.answer is None else _check_text(f"probe {i + 1} answer", p.answer, MAX_PROMPT_CHARS, True),
        )
        for i, p in enumerate(fact.probes)
    )
    return EditFact(prompt, answer, subject, paraphrases, probes, fact.fact_id)


def fact_set_digest(facts: Iterable[EditFact]) -> str:
    """Order-independent sha256 of what training sees (prompt, answer, paraphrases, probes)."""
    items = sorted(json.dumps(f.to_dict(), sort_keys=True, ensure_ascii=False) for f in facts)
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
