"""The training rows of one edit, and their layout: [facts | augmented copies | replay].

All rows are Examples in one list that the loop and the forward address by index. Row i of
the first `n_facts` is fact i; fact i's k prefixed copies (edit.augment_prefixes, engine.augment)
follow, fact by fact; the replay rows (the base model's own continuations, engine.replay) come
last. Augmentation and replay belong to breadth-first training: depth-first trains the facts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from locft.config import EditConfig
from locft.engine.augment import augmented_prompts
from locft.engine.data import Example, build_example, encode_prompt, example_from_ids
from locft.engine.model_io import LoadedModel
from locft.engine.replay import ReplayItem, replay_for
from locft.facts import EditFact


@dataclass(frozen=True)
class RowLayout:
    """Which row index is which: facts, then `copies_per_fact` copies per fact, then replay."""

    n_facts: int
    copies_per_fact: int = 0
    n_replay: int = 0

    @property
    def n_augmented(self) -> int:
        return self.n_facts * self.copies_per_fact

    def __len__(self) -> int:
        return self.n_facts + self.n_augmented + self.n_replay

    @property
    def facts(self) -> range:
        return range(self.n_facts)

    def copies(self, fact: int) -> range:
        """The rows of fact `fact`'s prefixed copies."""
        start = self.n_facts + fact * self.copies_per_fact
        return range(start, start + self.copies_per_fact)

    @property
    def replay(self) -> range:
        start = self.n_facts + self.n_augmented
        return range(start, start + self.n_replay)

    def edit_rows(self, facts: Sequence[int]) -> list[int]:
        """The rows that train these facts: the facts in their order, then each one's copies."""
        return list(facts) + [row for fact in facts for row in self.copies(fact)]


def training_rows(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    cfg: EditConfig,
    replay: Sequence[ReplayItem] | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[Example], RowLayout]:
    """The rows of an edit with `cfg` resolved (engine.resolve): when breadth-first, the prefixed
    copies and the replay rows too (`replay` None builds the default pool, cached under
    `cache_dir` when given)."""
    tok, prompt_format = loaded.tokenizer, cfg.prompt_format
    breadth_first = cfg.pipeline == "breadth-first"
    examples = [build_example(tok, f.prompt, f.answer, prompt_format) for f in facts]
    copies = cfg.augment_prefixes if breadth_first else 0
    if copies:
        for fact, prompts in zip(facts, augmented_prompts(facts, copies, cfg.seed)):
            examples += [build_example(tok, p, fact.answer, prompt_format) for p in prompts]
    n_replay = 0
    if cfg.replay_ratio and breadth_first:
        if replay is None:
            trained_on = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases]
            replay = replay_for(loaded, cfg, prompt_format, len(facts), exclude=trained_on, cache_dir=cache_dir)
        examples += [example_from_ids(encode_prompt(tok, r.prompt, r.prompt_format or prompt_format), r.token_ids)
                     for r in replay]
        n_replay = len(replay)
    layout = RowLayout(len(facts), copies, n_replay)
    assert len(layout) == len(examples)
    return examples, layout
