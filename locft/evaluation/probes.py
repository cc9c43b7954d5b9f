"""The locality probe set: prompts whose answers an edit must not change, and the base model's
answers to them, generated once per base model and cached under $LOCFT_HOME/cache/probes/.

Why a fixed built-in set: the facts' own probes cover only what their authors thought of, and
measured on the embedded model, edits mostly damage *formats* the fact set does not show
(docs/experiments/quality/README.md: "question -> short answer" spreads to every question). So the set mixes plain
questions, lowercase search-style questions, sentence completions and short instructions.
Measures only; the gate decides.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from locft.atomic import atomic_write_text
from locft.engine.generate import Generation

log = logging.getLogger(__name__)

CACHE_FORMAT = "locft-probe-cache/1"

# 100 generic prompts in four styles (25 each). Order matters: `fixed_probe_prompts(n)` takes
# the first n, interleaved so that any prefix keeps the mix.
_QUESTIONS = (
    "What is the capital of France?",
    "Who wrote the play Romeo and Juliet?",
    "How many days are there in a leap year?",
    "What is the chemical symbol for gold?",
    "Which planet is known as the Red Planet?",
    "What is the largest ocean on Earth?",
    "Who painted the Mona Lisa?",
    "What is the boiling point of water in degrees Celsius?",
    "How many continents are there?",
    "What language is spoken in Brazil?",
    "What is the square root of 81?",
    "Which animal is known as the king of the jungle?",
    "What gas do plants absorb from the air?",
    "Who was the first person to walk on the Moon?",
    "What is the longest river in Africa?",
    "How many legs does a spider have?",
    "What is the freezing point of water in Fahrenheit?",
    "Which country is home to the kangaroo?",
    "What is the main ingredient of guacamole?",
    "What currency is used in Japan?",
    "Who discovered penicillin?",
    "What is the hardest natural substance?",
    "How many minutes are in an hour?",
    "What is the tallest mountain in the world?",
    "Which organ pumps blood through the human body?",
)
_SEARCH_STYLE = (
    "who sings the song hotel california",
    "when did the titanic sink",
    "where is the eiffel tower located",
    "how many players on a soccer team",
    "what is the population of canada",
    "who invented the telephone",
    "when was the declaration of independence signed",
    "what is the speed of light",
    "who is the author of harry potter",
    "where do penguins live",
    "how long does it take to boil an egg",
    "what is the largest desert in the world",
    "who composed the four seasons",
    "when did world war 2 end",
    "what does dna stand for",
    "how far is the moon from the earth",
    "who built the great wall of china",
    "what is the capital of australia",
    "how many bones are in the human body",
    "what year did the berlin wall fall",
    "who played jack in the movie titanic",
    "where is mount kilimanjaro",
    "what is the smallest prime number",
    "who was the first president of the united states",
    "what is the national animal of scotland",
)
_COMPLETIONS = (
    "The sun rises in the",
    "Water is made of hydrogen and",
    "The first month of the year is",
    "A triangle has three",
    "The opposite of hot is",
    "Bees make honey from the nectar of",
    "The capital of Italy is",
    "Ice melts when it gets",
    "A week has seven",
    "The color of a clear sky is",
    "Cows give us",
    "The Earth revolves around the",
    "Two plus two equals",
    "The largest mammal on Earth is the",
    "In winter, many birds fly",
    "A baby cat is called a",
    "The Statue of Liberty is in",
    "Fish breathe through their",
    "The alphabet starts with the letter",
    "Paris is a city in",
    "A dozen means",
    "The heart of a computer is its",
    "Rain falls from",
    "The author of Hamlet is William",
    "After Monday comes",
)
_INSTRUCTIONS = (
    "Translate 'good morning' into Spanish.",
    "Name three primary colors.",
    "Give a synonym for 'happy'.",
    "Write the number twelve in digits.",
    "List the first three planets from the Sun.",
    "Spell the word 'necessary' backwards.",
    "Complete the sequence: 2, 4, 6, 8,",
    "Say hello in French.",
    "Name a fruit that is yellow.",
    "Give one example of a mammal that can fly.",
    "What is 15 minus 7?",
    "Name the opposite of 'ancient'.",
    "Describe the color of grass in one word.",
    "Give the plural of 'mouse'.",
    "Name a musical instrument with strings.",
    "Convert 1 kilometer to meters.",
    "Name the season after summer.",
    "Give an antonym of 'difficult'.",
    "Name a country in South America.",
    "Count from one to five.",
    "What is 6 times 7?",
    "Name a vegetable that is orange.",
    "Write a word that rhymes with 'cat'.",
    "Name the day before Friday.",
    "Tell me the past tense of 'run'.",
)

FIXED_PROBE_PROMPTS: tuple[str, ...] = tuple(
    p for group in zip(_QUESTIONS, _SEARCH_STYLE, _COMPLETIONS, _INSTRUCTIONS) for p in group
)


def fixed_probe_prompts(n: int) -> list[str]:
    """The first `n` built-in probe prompts (all of them when n exceeds the set)."""
    if n > len(FIXED_PROBE_PROMPTS):
        log.info("gates.probe_set_size %d exceeds the built-in set; using its %d prompts", n,
                 len(FIXED_PROBE_PROMPTS))
    return list(FIXED_PROBE_PROMPTS[: max(n, 0)])


def _cache_path(cache_dir: Path, fingerprint: str, prompt_format: str, max_new_tokens: int) -> Path:
    key = f"{fingerprint}:{prompt_format}:{max_new_tokens}"
    return Path(cache_dir) / "probes" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read_cache(path: Path, fingerprint: str) -> dict[str, Generation]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable probe cache %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("base_fingerprint") != fingerprint:
        log.warning("ignoring probe cache %s: unexpected content", path)
        return {}
    out: dict[str, Generation] = {}
    for prompt, g in (data.get("answers") or {}).items():
        try:
            out[prompt] = Generation(text=str(g["text"]), answer=str(g["answer"]),
                                     token_ids=tuple(int(t) for t in g["token_ids"]))
        except (KeyError, TypeError, ValueError):
            continue  # one bad entry is regenerated, not fatal
    return out


def _write_cache(path: Path, fingerprint: str, answers: dict[str, Generation]) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "base_fingerprint": fingerprint,
        "answers": {p: {"text": g.text, "answer": g.answer, "token_ids": list(g.token_ids)}
                    for p, g in answers.items()},
    }
    # readers (a concurrent `locft round run`) see old or new, never half; a cache: not fsynced
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False), durable=False)


def base_answers(
    prompts: Sequence[str],
    generate: Callable[[list[str]], list[Generation]],
    cache_dir: Path,
    fingerprint: str,
    prompt_format: str,
    max_new_tokens: int,
) -> tuple[list[Generation], int]:
    """The base model's answers to `prompts`, generating only those not cached yet.

    `generate` must run the UNEDITED base model (the caller guarantees it). Returns the answers
    in the order of `prompts` and how many were generated now.
    """
    path = _cache_path(cache_dir, fingerprint, prompt_format, max_new_tokens)
    cached = _read_cache(path, fingerprint)
    missing = list(dict.fromkeys(p for p in prompts if p not in cached))
    if missing:
        log.info("generating base answers for %d probe prompt(s) (%d cached)", len(missing), len(cached))
        for prompt, g in zip(missing, generate(missing)):
            cached[prompt] = g
        _write_cache(path, fingerprint, cached)
    return [cached[p] for p in prompts], len(missing)
