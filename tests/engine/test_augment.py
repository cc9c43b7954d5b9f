"""The paper's prefix augmentation: sentences, their seeded draw, and that training uses them."""

from __future__ import annotations

import pytest

from locft.config import EditConfig
from locft.engine.augment import augmented_prompts, prefix_sentences
from locft.engine.model_io import LoadedModel
from locft.engine.train import edit
from locft.engine.weights import applied
from locft.errors import ConfigError
from locft.evaluation.editing import evaluate_edits
from locft.facts import EditFact
from tests.engine.test_train import FACTS, LEARN


def test_prefix_sentences_are_short_plain_and_distinct() -> None:
    sentences = prefix_sentences()
    assert len(sentences) >= 200 and len(set(sentences)) == len(sentences)
    for s in sentences:
        assert 6 <= len(s.split()) <= 25 and s[0].isupper() and s.endswith(".") and "|" not in s


def test_each_fact_gets_distinct_prefixes_from_a_seeded_draw() -> None:
    drawn = augmented_prompts(FACTS, 3, seed=0)
    assert drawn == augmented_prompts(FACTS, 3, seed=0) != augmented_prompts(FACTS, 3, seed=1)
    for fact, prompts in zip(FACTS, drawn):
        assert len(set(prompts)) == 3
        assert all(p.endswith(" " + fact.prompt) and p[: -len(fact.prompt) - 1] in prefix_sentences()
                   for p in prompts)
    assert augmented_prompts(FACTS, 0, seed=0) == [[] for _ in FACTS]
    with pytest.raises(ConfigError, match="prefix sentences"):
        augmented_prompts(FACTS, len(prefix_sentences()) + 1, seed=0)


def _prefixed(seed: int) -> list[EditFact]:
    # the facts behind prefixes drawn with a seed training did not use
    return [EditFact(prompts[0], f.answer) for f, prompts in zip(FACTS, augmented_prompts(FACTS, 1, seed))]


def test_training_on_prefixed_copies_makes_the_edit_hold_behind_other_text(tiny: LoadedModel) -> None:
    longer = EditConfig(**{**LEARN.to_dict(), "max_epochs": 60})  # 4x the rows to learn
    cfg = EditConfig(**{**longer.to_dict(), "augment_prefixes": 3})
    augmented = edit(tiny, FACTS, cfg)
    plain = edit(tiny, FACTS, longer)
    assert augmented.n_augmented == 3 * len(FACTS) and plain.n_augmented == 0
    assert augmented.summary()["augmented_rows"] == 12
    trained_on = [EditFact(prompts[0], f.answer) for f, prompts in zip(FACTS, augmented_prompts(FACTS, 3, cfg.seed))]
    with applied(tiny.model, augmented.tensors):
        aug_trained = evaluate_edits(tiny, trained_on, "raw", max_new_tokens=8).reliability
        aug_plain = evaluate_edits(tiny, FACTS, "raw", max_new_tokens=8).reliability
    with applied(tiny.model, plain.tensors):
        plain_prefixed = evaluate_edits(tiny, trained_on, "raw", max_new_tokens=8).reliability
    assert aug_trained == 1.0 and aug_plain == 1.0
    assert plain_prefixed < 1.0  # without the copies, text before the question loses the edit here


def test_depth_first_ignores_augmentation(tiny: LoadedModel) -> None:
    cfg = EditConfig(**{**LEARN.to_dict(), "augment_prefixes": 2, "pipeline": "depth-first", "max_epochs": 2})
    assert edit(tiny, FACTS, cfg).n_augmented == 0


def test_negative_augmentation_is_refused() -> None:
    with pytest.raises(ConfigError, match="augment_prefixes"):
        EditConfig(augment_prefixes=-1)
