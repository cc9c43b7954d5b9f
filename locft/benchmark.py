"""`locft bench` as a library call: edit N facts of a benchmark file into the base model, evaluate.

Used by the CLI and by bench/; results are plain JSON-ready dicts, never asserted.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locft import __version__
from locft.config import EditConfig, ModelConfig, to_dict
from locft.errors import LocftError
from locft.locate.candidates import sample_facts
from locft.readers import load_edit_facts
from locft.recorded import recorded_command, recorded_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchSpec:
    data: Path
    n: int
    edit: EditConfig
    model: ModelConfig
    home: Path
    data_format: str = "auto"
    offset: int = 0  # skip the first `offset` items (e.g. a held-out slice)
    # Reliability is always measured on every fact; generalization and locality on a seeded
    # sample of this many facts (None: all). Generation dominates evaluation on a CPU.
    eval_sample: int | None = None
    # General capability (the gate's lm-eval suite) of the edited model against the base; () = skip.
    capability_tasks: tuple[str, ...] = ()
    capability_limit: int | None = 200  # items per task (quick; the gate scores 2000); None = whole split
    # keep the trained tensors as a snapshot directory (servable, comparable later); None = not kept
    save_snapshot: Path | None = None
    # "gated": `metrics` are what a scoped version answers (engine.scope), `metrics_unscoped` the
    # same tensors on every prompt; "always": `metrics` on every prompt, no scope built
    scope: str = "gated"
    # "given": the scope uses the benchmark's subjects; "found": each fact's subject is found in
    # its prompt, as for facts added without one (`locft add-fact PROMPT ANSWER`)
    scope_subjects: str = "given"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "locft": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _capability(loaded: Any, tensors: dict[str, Any], scope: Any, spec: BenchSpec,
                emit: Callable[[str, Any], None]) -> dict[str, Any]:
    """The gate's capability measurement, outside a round: base (cached per fingerprint) and edited
    (through the scoped model, as users get it), with the paired counts the gate tests (items lost
    and gained, one-sided sign-test p)."""
    from locft.engine.scoped import answering
    from locft.evaluation.capability import ScopeOnly, base_task_scores, task_scores
    from locft.evaluation.progress import EvaluationProgress
    from locft.policies.gating import pair_tasks

    tasks, limit, cache = list(spec.capability_tasks), spec.capability_limit, spec.home / "cache"

    def progress(which: str) -> EvaluationProgress:  # answer choices scored, per task
        return lambda done, total, task: emit("capability", (f"capability, {which}: {task}", done, total))

    base = base_task_scores(loaded.model, loaded.tokenizer, loaded.fingerprint, tasks, limit, cache,
                            request_progress=progress("base"))
    # as a round does: under a subject scope only the items it touches run through the version
    only = ScopeOnly(scope.names_a_subject, base) if scope is not None and scope.match == "subject" else None
    with answering(loaded, tensors, scope) as counts:
        edited = task_scores(loaded.model, loaded.tokenizer, tasks, limit, cache, request_progress=progress("edited"),
                             only_in_scope=only)
    pairs = pair_tasks({t: base[t].items for t in tasks}, {t: edited[t].items for t in tasks})
    paired = {t: c.to_dict() for t, c in pairs.items()}
    return {"tasks": tasks, "limit": limit, "base": {t: base[t].score for t in tasks},
            "edited": {t: edited[t].score for t in tasks},
            "difference": {t: round(edited[t].score - base[t].score, 4) for t in tasks}, "paired": paired,
            # forward rows (answer choices) the scope sent to the edit; None: every row (unscoped)
            "scope_rows": counts.to_dict() if scope is not None else None,
            "scope_items": only.to_dict() if only is not None else None}


def run_benchmark(spec: BenchSpec, on_event: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Load, measure the base answers to probes, train, evaluate; return the result record."""
    from locft.checks import require_offline_data
    from locft.engine.model_io import load_base
    from locft.engine.replay import replay_for, replay_pool_size
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.scope import scope_for_facts, scoped_edit_defaults
    from locft.engine.scoped import answering, tuned_layer_indices
    from locft.engine.train import edit
    from locft.evaluation.editing import base_probe_generations, evaluate_edits, scope_report

    emit = on_event or (lambda kind, payload: None)
    if spec.capability_tasks:  # a misspelt task fails now, not after hours of training
        from locft.evaluation.capability import resolve_tasks

        resolve_tasks(spec.capability_tasks)
    require_offline_data(scoped_edit_defaults(spec.edit, spec.scope == "gated"))
    if spec.save_snapshot is not None and spec.save_snapshot.exists():  # before training, not after
        raise LocftError(f"{spec.save_snapshot} already exists; name a new snapshot directory")
    facts = load_edit_facts(spec.data, spec.data_format, limit=spec.offset + spec.n)[spec.offset :]
    if len(facts) < spec.n:
        log.warning("%s has only %d facts after offset %d", spec.data, len(facts), spec.offset)
    t0 = time.perf_counter()
    loaded = load_base(spec.model, spec.home)
    load_seconds = time.perf_counter() - t0
    gated = spec.scope == "gated"
    edit_input = scoped_edit_defaults(spec.edit, gated)  # no replay by default under a scope
    cfg = resolve_edit_config(loaded, edit_input, len(facts))
    prompt_format = cfg.prompt_format
    sampled = sample_facts(facts, spec.eval_sample or len(facts), cfg.seed)
    probes = [p.prompt for f in sampled for p in f.probes]
    emit("phase", "base answers to probes")
    t1 = time.perf_counter()
    base = base_probe_generations(loaded, probes, prompt_format, cfg.max_new_tokens)
    base_seconds = time.perf_counter() - t1
    peaks = {"load_and_base_answers": peak_rss_bytes()}  # the high-water mark after each phase
    replay = []
    if cfg.replay_ratio and cfg.pipeline == "breadth-first":
        emit("phase", f"base answers for the replay pool ({replay_pool_size(cfg, len(facts))} prompts, cached)")
        evaluated = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases] + probes
        replay = replay_for(loaded, cfg, prompt_format, len(facts), exclude=evaluated, cache_dir=spec.home / "cache")
    replay_seconds = time.perf_counter() - t1 - base_seconds
    peaks["replay_pool"] = peak_rss_bytes()
    emit("phase", f"training on {len(facts)} facts ({cfg.pipeline})")
    result = edit(loaded, facts, cfg, progress=lambda p: emit("train", p), replay=replay)
    peaks["train"] = peak_rss_bytes()
    scope, scope_seconds = None, None
    if gated:
        # Built from the facts' prompts and subjects only; the paraphrases and probes measured
        # below are never seen, nor used to calibrate.
        emit("phase", f"building the scope ({cfg.scope_match}, subjects {spec.scope_subjects})")
        t_scope = time.perf_counter()
        scoped_facts = (facts if spec.scope_subjects == "given"
                        else [dataclasses.replace(f, subject=None) for f in facts])
        evaluated = [p for f in facts for p in f.paraphrases] + probes
        scope = scope_for_facts(loaded, scoped_facts, prompt_format, cfg.scope_match,
                                false_positive_rate=cfg.scope_false_positive_rate, layer=cfg.scope_layer,
                                tuned_layers=tuned_layer_indices(loaded.model, list(result.tensors)),
                                exclude=evaluated)
        scope_seconds = round(time.perf_counter() - t_scope, 2)
    if spec.save_snapshot is not None:
        from locft.engine.snapshot import save_snapshot

        save_snapshot(spec.save_snapshot.parent, spec.save_snapshot.name, result.tensors, loaded.fingerprint,
                      extra={"bench": {"data": recorded_path(spec.data), "n": len(facts), "offset": spec.offset,
                                       "edit_config": to_dict(result.config or cfg)}}, scope=scope)
        emit("phase", f"saved the trained tensors to {spec.save_snapshot}")
    def evaluate(which: str, with_scope: Any) -> Any:
        emit("phase", f"evaluating ({which})")
        with answering(loaded, result.tensors, with_scope):
            return evaluate_edits(loaded, facts, prompt_format, probes, base, cfg.max_new_tokens,
                                  progress=lambda done, total, label: emit("eval", (f"{label}, {which}", done, total)),
                                  paraphrase_facts=sampled)

    t2 = time.perf_counter()
    evaluation = evaluate("scoped" if scope is not None else "every prompt", scope)
    eval_seconds = time.perf_counter() - t2
    unscoped = evaluate("unscoped", None) if scope is not None else None
    coverage = scope_report(loaded, scope, facts, probes, prompt_format, paraphrase_facts=sampled)
    peaks["evaluate"] = peak_rss_bytes()
    capability, capability_seconds = None, None
    if spec.capability_tasks:
        emit("phase", f"capability: {', '.join(spec.capability_tasks)} (limit {spec.capability_limit})")
        t3 = time.perf_counter()
        capability = _capability(loaded, result.tensors, scope, spec, emit)
        capability_seconds = round(time.perf_counter() - t3, 2)
        peaks["capability"] = peak_rss_bytes()
    train = result.summary()
    return {
        "data": recorded_path(spec.data),
        "n": len(facts),
        "offset": spec.offset,
        "eval_sample": len(sampled) if spec.eval_sample is not None else None,
        "pipeline": cfg.pipeline,
        "metrics": evaluation.metrics(),  # what users get (scoped when spec.scope is "gated")
        "metrics_unscoped": unscoped.metrics() if unscoped is not None else None,  # the same tensors, every prompt
        "scope": coverage,  # recall (paraphrases in scope), false positives (probes in scope)
        "scope_mode": spec.scope,
        "scope_subjects": spec.scope_subjects if scope is not None else None,
        "capability": capability,
        "snapshot": str(spec.save_snapshot) if spec.save_snapshot is not None else None,
        "training": train,
        "seconds": {
            "load": round(load_seconds, 2),
            "base_probe_answers": round(base_seconds, 2),
            "replay_pool": round(replay_seconds, 2),
            "cache": train["cache_seconds"],
            "setup": train["setup_seconds"],
            "train": train["train_seconds"],
            "scope": scope_seconds,
            "evaluate": round(eval_seconds, 2),
            "capability": capability_seconds,
        },
        "edits_per_second": round(len(facts) / result.train_seconds, 3) if result.train_seconds else None,
        "peak_memory_bytes": peak_rss_bytes(),
        "peak_memory_bytes_after": peaks,
        "config": to_dict(result.config or cfg) | {"location": result.location.describe()},
        "model": {"source": loaded.source, "fingerprint": loaded.fingerprint},
        "samples": evaluation.samples,
        # per item, in the order asked (facts in file order; the seeded sample's paraphrases and
        # probes): `bench/paired_quality.py` compares two runs item by item
        "items": evaluation.items(),
        "items_unscoped": unscoped.items() if unscoped is not None else None,
        "environment": environment(),
        "command": recorded_command(),
    }
