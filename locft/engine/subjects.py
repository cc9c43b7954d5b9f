"""Which subject a fact is about, and whether a text names it: the scope's subject signal.

A key is a fact's subject as normalized words (`normalize_words`: case, Unicode forms,
punctuation and invisible characters do not matter). A text names a subject when the key's
words appear in it as a contiguous run of whole words; a long subject made of several names
also when the text names all of them (`name_parts`). A fact without a subject gets one found in
its prompt (`find_subject`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from locft.facts import EditFact

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{2,80})[\"“”«»]")
# Lower-case words that may sit inside a name ("Bank of England", "Leonardo da Vinci").
_NAME_JOINERS = {"of", "the", "de", "da", "del", "der", "di", "du", "la", "le", "van", "von", "y", "and", "&", "on",
                 "in", "for", "upon", "am", "an"}
# Capitalized only because a sentence starts with them: never a subject on their own.
_FUNCTION_WORDS = {
    "a", "an", "the", "what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was",
    "were", "do", "does", "did", "in", "on", "at", "of", "for", "to", "from", "by", "with", "name", "tell", "give",
    "please", "can", "could", "would", "should", "will", "has", "have", "had", "if", "and", "or", "this", "that",
    "these", "those", "it", "its", "there", "i", "you", "we", "they", "he", "she", "my", "your", "our", "their",
    "his", "her", "as", "after", "before", "during", "since", "until", "about", "into", "under", "over", "be",
}
_STOP_WORDS = _FUNCTION_WORDS | {
    "capital", "country", "city", "name", "called", "located", "part", "member", "born", "die", "died", "year",
    "language", "play", "plays", "played", "work", "works", "worked", "position", "held", "holds", "type", "kind",
    "s", "t", "made", "make", "one", "many", "much", "some", "any", "all", "other", "same", "new", "old",
}


def normalize_words(text: str) -> tuple[str, ...]:
    """Words for matching: NFKC, case-folded, invisible characters dropped, split at anything
    that is not a letter or digit (so punctuation and possessives separate words)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return tuple(_WORD.findall(text.casefold()))


def find_subject(prompt: str, frequency: Callable[[tuple[str, ...]], int] | None = None) -> str:
    """What a prompt without a given subject is most likely about: a quoted span, else a run of
    capitalized words (names may hold joiners such as "of"), else a content word. Never empty for
    a prompt with any word.

    Among several names (or, without any, several content words) the one fewest prompts of the
    fact set share wins (`frequency`: in how many of them a word sequence occurs): "In which
    historic county is 4 Heriot Row located in Edinburgh?" is about 4 Heriot Row when many facts
    name Edinburgh. Ties, and no `frequency`, go to the last: questions name their subject late
    ("... of Great Britain is X located?")."""
    quoted = _QUOTED.findall(prompt)
    if quoted:
        return max(quoted, key=len).strip()
    rarest = (lambda candidates: min(reversed(candidates), key=lambda c: frequency(normalize_words(c)))) \
        if frequency is not None else (lambda candidates: candidates[-1])
    # a sentence or a bracket ends a name ("Beirut? It is", "USS Parrott (DD-218)")
    tokens = re.findall(r"[^\s,;:?!()\[\]{}\"“”]+|[?!()\[\]]", prompt)
    runs: list[list[str]] = []
    current: list[str] = []
    joiners: list[str] = []  # lower-case words after a capitalized one: part of a name if one more follows
    for token in tokens:
        bare = re.sub(r"['’]s$", "", token).strip(".'’")  # "Carol Bly's death" is about Carol Bly
        if not bare:
            continue
        capital = bare[0].isupper() or bare[0].isdigit()
        if capital and bare.lower() not in _FUNCTION_WORDS:
            if current and len(joiners) > 1:  # "CEO of the Bank": two joiners end a name
                runs.append(current)
                current = []
            elif current and joiners and len(current) == 1 and current[0].isupper() and len(current[0]) <= 4:
                current = []  # "CEO of Twitter" is about Twitter: a title before "of" is no name
            elif current:
                current.extend(joiners)
            current.append(bare)
            joiners = []
        elif current and bare.lower() in _NAME_JOINERS:
            joiners.append(bare)
        else:
            if current:
                runs.append(current)
            current, joiners = [], []
    if current:
        runs.append(current)
    # a bare number ("USS Bermuda (1861)") is a detail, not what the prompt is about
    names = [" ".join(run) for run in runs if not all(t.replace("-", "").isdigit() for t in run)] or \
        [" ".join(run) for run in runs]
    if names:
        return str(rarest(names))
    # no name: a content word ("the boiling point of mercury" is about mercury); one word, since a
    # key must appear as a contiguous run of words
    words = [w for w in normalize_words(prompt) if w not in _STOP_WORDS and len(w) > 2] or list(normalize_words(prompt))
    nouns = [w for w in words if not w.endswith("ed")] or words  # "aloha was written in": not "written"
    return str(rarest(nouns)) if nouns else ""


class PromptFrequency:
    """In how many of a fact set's prompts a word sequence occurs (whole words, normalized)."""

    MAX_WORDS = 8  # longer sequences are counted by scanning

    def __init__(self, prompts: Iterable[str]) -> None:
        self._prompts = [normalize_words(p) for p in prompts]
        self._counts: Counter[tuple[str, ...]] = Counter()
        for words in self._prompts:
            self._counts.update({words[i:i + n] for n in range(1, self.MAX_WORDS + 1)
                                 for i in range(len(words) - n + 1)})

    def __call__(self, words: tuple[str, ...]) -> int:
        if len(words) <= self.MAX_WORDS:
            return self._counts[words]
        return sum(1 for prompt in self._prompts if contains_words(prompt, words))


# Lower-case words that stay inside one name when a long subject is split into its names.
_PART_JOINERS = {"of", "the", "de", "da", "del", "der", "di", "du", "la", "le", "van", "von", "y", "&"}


def name_parts(subject: str) -> tuple[tuple[str, ...], ...]:
    """The names a long descriptive subject is made of, as normalized words: "Stable Block located
    at Wedderburn Castle" is ("stable", "block") and ("wedderburn", "castle"); "Cluny Castle's
    Stable Block" is ("cluny", "castle") and ("stable", "block"). A rephrasing keeps the names and
    changes the words between them ("the Stable Block of Cluny Castle"). Empty unless there are
    two or more names: a subject that is one name is matched as a whole."""
    runs: list[list[str]] = []
    current: list[str] = []
    joiners: list[str] = []
    for token in re.findall(r"[^\s,;:?!()\[\]{}\"“”]+", subject):
        possessive = re.search(r"['’]s?$", token) is not None
        bare = re.sub(r"['’]s?$", "", token).strip(".'’")
        if not bare:
            continue
        if (bare[0].isupper() or bare[0].isdigit()) and bare.lower() not in _FUNCTION_WORDS:
            current.extend(joiners if current else [])
            current.append(bare)
            joiners = []
            if possessive:  # "Cluny Castle's": the name ends here
                runs.append(current)
                current = []
        elif current and bare.lower() in _PART_JOINERS:
            joiners.append(bare)
        else:
            if current:
                runs.append(current)
            current, joiners = [], []
    if current:
        runs.append(current)
    parts: list[tuple[str, ...]] = []
    for run in runs:
        words = normalize_words(" ".join(run))
        if usable_key(words) and words not in parts:
            parts.append(words)
    return tuple(parts) if len(parts) >= 2 else ()


@dataclass(frozen=True)
class ScopeKey:
    """One fact's subject as matched: its normalized words, and where they came from. A long
    subject made of several names also matches a text that names all of them, in any order and
    with any words between (`parts`)."""

    words: tuple[str, ...]
    source: Literal["given", "found"]
    fact_id: str | None = None
    parts: tuple[tuple[str, ...], ...] = ()


def usable_key(words: tuple[str, ...]) -> bool:
    """A key must name something: not only function words ("In", a data error seen in
    WikiBigEdit, would put every prompt with "in" in scope) and not a lone one- or two-letter word."""
    content = [w for w in words if w not in _FUNCTION_WORDS]
    return bool(content) and (len(words) > 1 or len(words[0]) > 2 or words[0].isdigit())


def _found_key(fact: EditFact, frequency: PromptFrequency) -> ScopeKey:
    """The subject found in the prompt, or, when even that names nothing, the whole prompt."""
    words = normalize_words(find_subject(fact.prompt, frequency))
    return ScopeKey(words if usable_key(words) else normalize_words(fact.prompt), "found", fact.fact_id)


def subject_keys(facts: Sequence[EditFact]) -> tuple[list[ScopeKey], dict[str, int]]:
    """One key per fact (two when a given subject is missing from the prompt, which also gets the
    subject found there; a given subject that names nothing is replaced by the found one), and
    the counts of given subjects missing from their prompt and of unusable ones."""
    keys: list[ScopeKey] = []
    counts = {"given_subject_not_in_prompt": 0, "given_subject_unusable": 0}
    frequency = PromptFrequency(f.prompt for f in facts)
    for fact in facts:
        words = normalize_words(fact.subject) if fact.subject else ()
        if words and not usable_key(words):
            counts["given_subject_unusable"] += 1
            words = ()
        if not words:
            keys.append(_found_key(fact, frequency))
            continue
        keys.append(ScopeKey(words, "given", fact.fact_id, name_parts(fact.subject or "")))
        if not contains_words(normalize_words(fact.prompt), words):
            counts["given_subject_not_in_prompt"] += 1
            keys.append(_found_key(fact, frequency))
    return keys, counts


def contains_words(words: tuple[str, ...], key: tuple[str, ...]) -> bool:
    n = len(key)
    return any(words[i:i + n] == key for i in range(len(words) - n + 1))


def chat_boilerplate(tokenizer: Any, prompt_format: str) -> tuple[tuple[str, ...], ...]:
    """The words a chat template adds around every user turn, as blocks of 3 or more words (its
    system prompt, say): matching ignores them, or a subject named there would be in every prompt."""
    from locft.engine.data import encode_prompt

    if prompt_format != "chat":
        return ()
    text = str(tokenizer.decode(encode_prompt(tokenizer, "", "chat"), skip_special_tokens=True))
    blocks = []
    for line in text.splitlines():
        words = normalize_words(line)
        if len(words) >= 3:
            blocks.append(words)
    return tuple(blocks)
