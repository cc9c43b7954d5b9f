"""The training rows' layout: [facts | augmented copies | replay], addressed by index."""

from __future__ import annotations

from locft.config import EditConfig
from locft.engine.augment import augmented_prompts
from locft.engine.data import build_example
from locft.engine.model_io import LoadedModel
from locft.engine.replay import ReplayItem
from locft.engine.rows import RowLayout, training_rows
from tests.engine.test_train import FACTS


def test_layout_ranges() -> None:
    layout = RowLayout(n_facts=3, copies_per_fact=2, n_replay=4)
    assert len(layout) == 13 and layout.n_augmented == 6
    assert layout.facts == range(0, 3)
    assert [layout.copies(i) for i in layout.facts] == [range(3, 5), range(5, 7), range(7, 9)]
    assert layout.replay == range(9, 13)
    # a batch of facts trains the facts in its order, then each one's copies
    assert layout.edit_rows([2, 0]) == [2, 0, 7, 8, 3, 4]
    assert RowLayout(2).edit_rows([1]) == [1] and RowLayout(2).replay == range(2, 2)


def test_training_rows_follow_the_layout(tiny: LoadedModel) -> None:
    replay = [ReplayItem("Some question?", (42, 43, 44), "raw"), ReplayItem("Another one:", (7, 8))]
    cfg = EditConfig(prompt_format="raw", augment_prefixes=2, replay_ratio=1.0, seed=3)
    examples, layout = training_rows(tiny, FACTS, cfg, replay)
    assert layout == RowLayout(len(FACTS), 2, 2) and len(examples) == len(layout)
    tok = tiny.tokenizer
    for i, (fact, prompts) in enumerate(zip(FACTS, augmented_prompts(FACTS, 2, seed=3))):
        assert examples[i] == build_example(tok, fact.prompt, fact.answer, "raw")
        assert [examples[r] for r in layout.copies(i)] == [build_example(tok, p, fact.answer, "raw") for p in prompts]
    assert [examples[r].input_ids[examples[r].prompt_len :] for r in layout.replay] == [(42, 43, 44), (7, 8)]
    # depth-first trains the facts alone
    alone, layout = training_rows(tiny, FACTS, EditConfig(**{**cfg.to_dict(), "pipeline": "depth-first"}), replay)
    assert layout == RowLayout(len(FACTS)) and alone == examples[: len(FACTS)]
