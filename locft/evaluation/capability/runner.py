"""Measuring: lm-eval's `evaluate` over the built-in task YAMLs (or lm-eval's own tasks) for an
in-memory model, one task at a time, with each item's score where the task has them."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.errors import ConfigError
from locft.evaluation.capability.isolation import RUN_LOCK, hf_environment, quiet_lm_eval, saved_model_state, saved_rng
from locft.evaluation.capability.registry import (
    TASKS_DIR,
    CapabilityTask,
    PassthroughTask,
    TaskSpec,
    has_item_scores,
    resolve_tasks,
)
from locft.evaluation.progress import EvaluationProgress

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch

log = logging.getLogger(__name__)

FEWSHOT_SEED = 1234  # lm-eval's default; only seeds a task-local sampler (we run zero-shot anyway)

# Two EvaluationProgress callbacks, both (done, total, task name):
# - progress: after each task has been measured (tasks done of all tasks);
# - request_progress: within a task, the requests lm-eval has scored so far (one per answer
#   choice, or per passage for bits per byte), about a hundred calls a task.
# Whatever they raise stops the run (e.g. a round being stopped); state is restored as on any error.


@dataclass(frozen=True)
class TaskScore:
    """A task's headline score and, for tasks with per-item scores (`has_item_scores`), the
    headline metric of each item in document order (1.0 / 0.0 for acc); otherwise None."""

    score: float
    items: tuple[float, ...] | None = None


@dataclass
class ScopeOnly:
    """Which capability requests a scoped version answers with its edits (`in_scope(text)`), the
    base model's item scores for the rest, and counts of what was scored (for the round report)."""

    in_scope: Callable[[str], bool]
    base: Mapping[str, TaskScore]
    items_scored: dict[str, int] = field(default_factory=dict)  # per task: items run through the version
    items_total: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"items_scored": dict(self.items_scored), "items_total": dict(self.items_total)}


def measure_capability(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: EvaluationProgress | None = None,
) -> dict[str, float]:
    """One headline score per task for the in-memory `model`, via lm-eval's HFLM. Decides nothing.

    - tasks: built-in names (see the package docstring; all offline) or `lm_eval:<task>[:<metric>]`.
    - limit: the first N items of each task; None = the whole split.
    - cache_dir: HF dataset cache for this run (e.g. under $LOCFT_HOME); nothing is written
      elsewhere.
    - progress(done, total, task) is called after each task.

    Returns {task: score}: acc / acc_norm in [0, 1] (higher is better) or bits_per_byte (lower is
    better, see `lower_is_better`). The same model gives the same numbers every time. The
    caller's global RNG state, environment, model.training flags and tie state are left as found;
    the weights are only read.
    """
    return {name: score for name, (score, _) in
            _evaluate(model, tokenizer, tasks, limit, cache_dir, batch_size, progress, False).items()}


def item_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: EvaluationProgress | None = None,
) -> dict[str, list[float]]:
    """Per item, in the task's order, the headline metric (e.g. 1.0 / 0.0 for acc): what a paired
    comparison of two models on the same items needs. Built-in multiple-choice tasks only;
    otherwise as `measure_capability`."""
    specs = resolve_tasks(tasks)
    for spec in specs:
        if not has_item_scores(spec.name):
            raise ConfigError(f"per-item scores are for built-in multiple-choice tasks, not {spec.name!r}")
    return {name: list(scored.items or ()) for name, scored in
            task_scores(model, tokenizer, tasks, limit, cache_dir, batch_size, progress).items()}


def task_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: EvaluationProgress | None = None,
    request_progress: EvaluationProgress | None = None,
    only_in_scope: ScopeOnly | None = None,
) -> dict[str, TaskScore]:
    """As `measure_capability`, with each item's score where the task has them (same cost: lm-eval
    keeps the per-document results it computes anyway).

    `only_in_scope`: score through a scoped version only the items it would answer with its edits
    (`ScopeOnly`); every other item of a task with per-item scores is the base model's answer by
    construction, so it takes the base's item score instead of being run again."""
    measured = _evaluate(model, tokenizer, tasks, limit, cache_dir, batch_size, progress, True, request_progress,
                         only_in_scope)
    out = {}
    for name, (score, items) in measured.items():
        out[name] = TaskScore(score, tuple(items) if has_item_scores(name) else None)
    return out


def _headline(results: Mapping[str, Any], spec: TaskSpec) -> float:
    if isinstance(spec, PassthroughTask):
        task, key = spec.lm_eval_task, f"{spec.metric},{spec.filter}"
    else:
        task, key = spec.name, f"{spec.metric},none"
    per_task = results.get("results", {})
    if task not in per_task or key not in per_task[task]:
        reported = sorted(
            f"{t}:{k.replace(',none', '')}" for t, ms in per_task.items() for k in ms
            if "," in k and "_stderr" not in k
        )
        raise ConfigError(
            f"capability task {spec.name!r}: lm-eval reported no {key!r} for {task!r}; "
            f"it reported {', '.join(reported) or 'nothing'} (name one as lm_eval:<task>:<metric>)"
        )
    return float(per_task[task][key])


def _evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int,
    progress: EvaluationProgress | None,
    per_item: bool,
    request_progress: EvaluationProgress | None = None,
    only_in_scope: ScopeOnly | None = None,
) -> dict[str, tuple[float, list[float]]]:
    """{task: (headline score, per-item headline metric in document order, empty unless per_item)}."""
    specs = resolve_tasks(tasks)  # fail on a typo before touching the model
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"capability limit must be >= 1 or None, got {limit}")
    if batch_size < 1:
        raise ConfigError(f"capability batch_size must be >= 1, got {batch_size}")
    if not specs:
        return {}
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    offline = not any(isinstance(s, PassthroughTask) for s in specs)

    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    from locft.evaluation.capability.model import CapabilityLM

    measured: dict[str, tuple[float, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(RUN_LOCK)
        stack.enter_context(saved_rng())
        stack.enter_context(hf_environment(cache_dir, offline))
        stack.enter_context(quiet_lm_eval())
        stack.enter_context(saved_model_state(model, tokenizer))
        stack.enter_context(torch.no_grad())
        lm = CapabilityLM(model, tokenizer, batch_size)
        # only the YAMLs shipped here (no index of lm-eval's 14k); `limit` reaches their loader
        local_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"limit": limit})
        hub_manager: Any = None
        for index, spec in enumerate(specs):
            started = time.perf_counter()
            if isinstance(spec, CapabilityTask):
                loaded = local_manager.load([spec.name])
            else:
                hub_manager = hub_manager or TaskManager()
                try:
                    loaded = hub_manager.load([spec.lm_eval_task])
                except KeyError:
                    raise ConfigError(f"lm-eval knows no task {spec.lm_eval_task!r} (from {spec.name!r})") from None
            for task_obj in loaded["tasks"].values():
                # What simple_evaluate does besides evaluate(); simple_evaluate itself would also
                # reseed global RNGs and spend ~1.5 s per call collecting environment info.
                if task_obj.get_config("num_fewshot") is None:
                    task_obj.set_config(key="num_fewshot", value=0)
                task_obj.set_fewshot_seed(seed=FEWSHOT_SEED)
            keep_items = per_item and has_item_scores(spec.name)
            base_items = only_in_scope.base.get(spec.name) if only_in_scope is not None else None
            restrict = keep_items and base_items is not None and base_items.items is not None
            lm.start_task(spec.name, request_progress, only_in_scope.in_scope if restrict and only_in_scope else None)
            results = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=keep_items)
            score = _headline(results or {}, spec)
            if math.isnan(score):
                log.warning("capability task %s gave NaN (no items?)", spec.name)
            items: list[float] = []
            if keep_items:
                samples = sorted((results or {}).get("samples", {}).get(spec.name, []), key=lambda s: s["doc_id"])
                items = [float(s[spec.metric]) for s in samples]
                if restrict and only_in_scope is not None and base_items is not None and base_items.items is not None:
                    # an item none of whose requests is in scope is the base model's answer by construction
                    scored = [s["doc_id"] in lm.ran for s in samples]
                    if len(base_items.items) != len(items):
                        raise ConfigError(f"capability {spec.name}: {len(items)} items, the base has "
                                          f"{len(base_items.items)}; measure the base again")
                    items = [v if run else b for v, b, run in zip(items, base_items.items, scored)]
                    score = sum(items) / len(items) if items else math.nan
                    only_in_scope.items_scored[spec.name] = sum(scored)
                    only_in_scope.items_total[spec.name] = len(items)
            measured[spec.name] = (score, items)
            log.info("capability %s = %.4f (%s, limit %s, %.1f s)", spec.name, score, spec.metric,
                     limit, time.perf_counter() - started)
            if progress is not None:
                progress(index + 1, len(specs), spec.name)
    return measured
