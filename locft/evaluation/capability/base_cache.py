"""Base-model capability scores, computed once per (base model, task, limit, run context) and then
read from JSON files: what the capability gate compares a candidate with."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.atomic import atomic_write_text
from locft.evaluation.capability.registry import has_item_scores, resolve_task, resolve_tasks, spec_digest
from locft.evaluation.capability.runner import TaskScore, task_scores
from locft.evaluation.progress import EvaluationProgress

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def run_context(model: torch.nn.Module, batch_size: int) -> dict[str, str]:
    """What besides the weights changes the numbers: dtype, device kind, batch size (padding)."""
    param = next(model.parameters())
    return {"dtype": str(param.dtype), "device": param.device.type, "batch_size": str(batch_size)}


@dataclass
class BaseCapabilityCache:
    """Base-model capability scores as JSON files, one per (base fingerprint, task, limit, context),
    with the per-item scores where the task has them (what the paired capability gate compares).

    One file per task, so adding a task to the gate measures only that task. A corrupt or
    unreadable file is a miss, never an error.
    """

    cache_dir: Path
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.cache_dir) / "capability-base"

    def key(self, base_fingerprint: str, task: str, limit: int | None, context: Mapping[str, str]) -> dict[str, Any]:
        return {
            "base_fingerprint": base_fingerprint,
            "task": task,
            "limit": limit,
            "spec": spec_digest(resolve_task(task)),
            **{k: context[k] for k in sorted(context)},
        }

    def _path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    def get(self, base_fingerprint: str, task: str, limit: int | None, context: Mapping[str, str]) -> TaskScore | None:
        """The cached score; `items` is None when the record has none (older records, tasks
        without per-item scores)."""
        key = self.key(base_fingerprint, task, limit, context)
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable capability cache %s: %s", path, exc)
            return None
        items = data.get("items") if isinstance(data, dict) else None
        if (not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("score"), (int, float))
                or not (items is None or (isinstance(items, list)
                                          and all(isinstance(v, (int, float)) for v in items)))):
            log.warning("ignoring capability cache %s: unexpected content", path)
            return None
        return TaskScore(float(data["score"]), None if items is None else tuple(float(v) for v in items))

    def put(self, base_fingerprint: str, task: str, limit: int | None, context: Mapping[str, str],
            score: float | TaskScore) -> Path:
        scored = score if isinstance(score, TaskScore) else TaskScore(float(score))
        key = self.key(base_fingerprint, task, limit, context)
        path = self._path(key)
        record: dict[str, Any] = {"key": key, "score": scored.score,
                                  "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if scored.items is not None:
            record["items"] = list(scored.items)
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
        return path


def base_capability(
    model: torch.nn.Module,
    tokenizer: Any,
    base_fingerprint: str,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: EvaluationProgress | None = None,
) -> dict[str, float]:
    """Capability of the BASE model (`model` must be it), measured once and then read from the cache.

    Only tasks missing from the cache are run (`progress` then counts those); when all are cached,
    `progress(n, n, "")` is called once. NaN scores are returned but never cached.
    """
    return {name: scored.score for name, scored in
            base_task_scores(model, tokenizer, base_fingerprint, tasks, limit, cache_dir, batch_size,
                             progress, need_items=False).items()}


def base_task_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    base_fingerprint: str,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: EvaluationProgress | None = None,
    need_items: bool = True,
    request_progress: EvaluationProgress | None = None,
) -> dict[str, TaskScore]:
    """As `base_capability`, with per-item scores for the tasks that have them. With `need_items`,
    a cached record without items (written before they were kept) is measured again, once."""
    specs = resolve_tasks(tasks)
    cache = BaseCapabilityCache(Path(cache_dir))
    context = run_context(model, batch_size)
    scores: dict[str, TaskScore] = {}
    missing: list[str] = []
    for spec in specs:
        cached = cache.get(base_fingerprint, spec.name, limit, context)
        if cached is None or (need_items and cached.items is None and has_item_scores(spec.name)):
            missing.append(spec.name)
        else:
            scores[spec.name] = cached
    if missing:
        log.info("measuring base capability for %s (not cached)", ", ".join(missing))
        measured = task_scores(model, tokenizer, missing, limit, cache_dir, batch_size, progress, request_progress)
        for name, scored in measured.items():
            if not math.isnan(scored.score):
                cache.put(base_fingerprint, name, limit, context, scored)
        scores |= measured
    elif progress is not None:
        progress(len(specs), len(specs), "")
    return {spec.name: scores[spec.name] for spec in specs}
