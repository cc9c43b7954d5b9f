"""lm-eval's view of an in-memory model: an `HFLM` subclass that measures the model as given, draws
no progress bars, reports the requests scored, and under a scope runs only the items in scope.

Imports lm-eval (and torch): import this module only when measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook
from lm_eval.models.huggingface import HFLM

from locft.evaluation.progress import EvaluationProgress


class _RequestCounter(CacheHook):
    """HFLM hands each scored request to its cache hook (CachingLM's; nothing is cached here): the
    count that lm-eval's own progress bar shows, reported about a hundred times a task."""

    def __init__(self) -> None:
        super().__init__(None)
        self.report: EvaluationProgress | None = None
        self.task = ""
        self.done = 0
        self.total = 0

    def start(self, total: int) -> None:
        self.done, self.total = 0, total

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        # "loglikelihood" once per request of a loglikelihood call; a rolling call reports each of
        # its requests once, as "loglikelihood_rolling" (its windows come without a request)
        if self.report is None or attr not in ("loglikelihood", "loglikelihood_rolling") or not self.total:
            return
        self.done += 1
        if self.done % max(1, self.total // 100) == 0 or self.done >= self.total:
            self.report(min(self.done, self.total), self.total, self.task)


class CapabilityLM(HFLM):
    """`HFLM(pretrained=model)` for one measurement; `start_task` before each task's evaluation."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int) -> None:
        # HFLM.__init__ calls model.tie_weights(), which re-ties an output head the config calls
        # tied even where the weights were kept apart (transformers itself leaves such a checkpoint
        # untied). Shadowed on the instance for the constructor only: the model is measured as given.
        shadowed = "tie_weights" in model.__dict__
        previous = model.__dict__.get("tie_weights")
        # (nn.Module.__setattr__ is typed for tensors and modules only, hence the ignores)
        model.tie_weights = lambda *args, **kwargs: None  # type: ignore[assignment]
        try:
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        finally:
            if shadowed:
                model.tie_weights = previous  # type: ignore[assignment]
            else:
                del model.tie_weights
        self._counter = _RequestCounter()
        self.set_cache_hook(self._counter)
        self._in_scope: Callable[[str], bool] | None = None
        self.ran: set[int] = set()  # this task's items (doc ids) whose requests reached the model

    def start_task(self, task: str, report: EvaluationProgress | None,
                   in_scope: Callable[[str], bool] | None = None) -> None:
        """The next evaluation is `task` (one task per evaluation, so a doc id names an item): report
        its requests to `report`; with `in_scope`, only the loglikelihood requests of items with a
        request in scope reach the model, the others get a placeholder (their items are replaced by
        the base model's afterwards)."""
        self._counter.report, self._counter.task = report, task
        self._in_scope = in_scope
        self.ran = set()

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self._in_scope is None:
            self._counter.start(len(requests))
            return super().loglikelihood(requests, disable_tqdm=True)
        # by item: one answer choice in scope runs all of the item's choices (they are compared)
        docs = {r.doc_id for r in requests if self._in_scope(str(r.args[0]) + str(r.args[1]))}
        self.ran |= docs
        keep = [i for i, r in enumerate(requests) if r.doc_id in docs]
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        if keep:
            self._counter.start(len(keep))
            for i, result in zip(keep, super().loglikelihood([requests[i] for i in keep], disable_tqdm=True)):
                out[i] = result
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        self._counter.start(len(requests))
        return super().loglikelihood_rolling(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        # loglikelihood_rolling asks for a bar per batch of windows: none is drawn
        return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
