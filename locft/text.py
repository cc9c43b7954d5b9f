"""Text normalization shared by exact-match evaluation and the store's conflict detection."""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: NFKC, lowercase, no punctuation, no articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def normalize_prompt(text: str) -> str:
    """Key for 'the same question': case, spacing and trailing punctuation do not matter."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SPACES.sub(" ", text).strip()
    return text.rstrip(" ?.!:")


def exact_match(prediction: str, target: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(target)
