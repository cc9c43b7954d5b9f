"""The `locft locate` sweep: train every candidate location on a sample, measure, pick one."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locft.config import EditConfig
from locft.errors import ConfigError, LocftError
from locft.facts import EditFact
from locft.locate.candidates import sample_facts
from locft.locate.report import CandidateResult, LocateReport
from locft.policies.location import LocateTolerances, Selection, select_from_sweep

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel
    from locft.engine.targets import EditLocation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocateSettings:
    """What the sweep costs and measures. The edit recipe itself (lr, batch size, prompt format,
    replay) comes from the EditConfig passed to `locate`."""

    sample: int = 50  # facts per candidate (a seeded sample when more are given)
    seed: int = 0  # the sample's seed (training uses the EditConfig's seed)
    epochs: int | None = None  # epoch budget per candidate; None: the EditConfig's max_epochs
    # The sample is small, so at the round's batch size an epoch is one or two steps: measured
    # on the embedded model, 30 facts x 10 epochs at batch 32 (10 steps) learned 0.47 of them.
    # The batch is shrunk until an epoch has at least this many steps (never grown).
    min_steps_per_epoch: int = 4
    # Exact locality needs a generation per probe prompt (about 2/3 of a candidate's evaluation
    # time); token locality, which the priority uses, needs one teacher-forced pass.
    exact_locality: bool = False
    capability_tasks: tuple[str, ...] = ("wiki_bpb",)  # () skips the capability level
    capability_limit: int | None = 50  # items (passages) per task; the same ones every time
    probe_set_size: int = 100  # fixed probe prompts (locft.evaluation.probes), plus the facts' own
    tolerances: LocateTolerances = field(default_factory=LocateTolerances)
    # Only for warnings: the gate a round would apply to the chosen location's locality.
    min_locality: float | None = None
    # serve.scope: "gated" measures each candidate through its scope (what users would get)
    scope: str = "gated"

    def __post_init__(self) -> None:
        if self.sample < 1:
            raise ConfigError(f"locate sample must be >= 1, got {self.sample}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"locate epochs must be >= 1, got {self.epochs}")
        if self.min_steps_per_epoch < 1:
            raise ConfigError(f"locate min_steps_per_epoch must be >= 1, got {self.min_steps_per_epoch}")
        if self.capability_limit is not None and self.capability_limit < 1:
            raise ConfigError(f"locate capability limit must be >= 1, got {self.capability_limit}")
        if self.probe_set_size < 0:
            raise ConfigError(f"locate probe set size must be >= 0, got {self.probe_set_size}")


@dataclass(frozen=True)
class LocateProgress:
    """What the sweep is doing; `candidate` is 0-based (None for the base-model phases)."""

    phase: str  # "base", "train", "evaluate", "capability"
    candidate: int | None
    n_candidates: int
    detail: str = ""
    done: int | None = None
    total: int | None = None
    loss: float | None = None


LocateProgressCallback = Callable[[LocateProgress], None]


def _capability_drop(cand: dict[str, float], base: dict[str, float], lower: frozenset[str]) -> float | None:
    """The worst task's drop in the gate's convention; NaN when a score is missing or NaN."""
    if not base:
        return None
    drops = []
    for task, b in base.items():
        c = cand.get(task)
        if c is None or math.isnan(c) or math.isnan(b):
            return math.nan
        drops.append(c - b if task in lower else b - c)
    return max(drops)


def locate(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    candidates: Sequence[EditLocation],
    edit_cfg: EditConfig,
    settings: LocateSettings | None = None,
    *,
    cache_dir: Path,
    current: EditLocation | None = None,
    progress: LocateProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LocateReport:
    """Train and measure every candidate location on a sample of `facts`; pick one.

    The model is left exactly as it was (each candidate is trained from the base weights and
    only applied inside scoped swaps). `cache_dir` holds the base model's probe answers and
    capability scores (e.g. $LOCFT_HOME/cache). Raises LocftError before any training when a
    candidate does not resolve; a candidate that fails while training is reported, not fatal.
    """
    from locft.engine.data import resolve_prompt_format
    from locft.engine.generate import greedy_generate
    from locft.engine.resolve import resolve_edit_config
    from locft.engine.scope import scope_for_facts, scoped_edit_defaults
    from locft.engine.scoped import answering, tuned_layer_indices
    from locft.engine.targets import resolve_location
    from locft.engine.train import EditCancelled, edit
    from locft.evaluation.capability import base_capability, lower_is_better, measure_capability, resolve_tasks
    from locft.evaluation.editing import evaluate_edits, token_agreement
    from locft.evaluation.probes import base_answers, fixed_probe_prompts

    settings = settings or LocateSettings()
    if not facts:
        raise LocftError("no facts to locate with: pass a fact file, or add facts to the store first")
    if not candidates:
        raise LocftError("no candidate locations to compare")
    resolve_tasks(settings.capability_tasks)  # a typo fails now, not after the first training
    for loc in candidates:
        resolve_location(loaded.model, loc)
    started = time.perf_counter()
    n = len(candidates)
    emit = progress or (lambda p: None)
    sample = sample_facts(facts, settings.sample, settings.seed)
    epochs = settings.epochs or edit_cfg.max_epochs
    edit_input = scoped_edit_defaults(replace(edit_cfg, max_epochs=epochs), settings.scope == "gated")
    resolved = resolve_edit_config(loaded, edit_input, len(sample))
    assert resolved.batch_size is not None
    batch = min(resolved.batch_size, max(1, math.ceil(len(sample) / settings.min_steps_per_epoch)))
    resolved = replace(resolved, batch_size=batch)
    prompt_format = resolve_prompt_format(resolved.prompt_format, loaded.tokenizer)
    max_new = resolved.max_new_tokens
    probe_prompts = list(dict.fromkeys(
        fixed_probe_prompts(settings.probe_set_size) + [p.prompt for f in sample for p in f.probes]
    ))

    emit(LocateProgress("base", None, n, f"base model answers to {len(probe_prompts)} probe prompts (cached)"))
    base_gens, _ = base_answers(
        probe_prompts, lambda ps: greedy_generate(loaded, ps, prompt_format, max_new), cache_dir,
        loaded.fingerprint, prompt_format, max_new,
    )
    tasks = list(settings.capability_tasks)
    base_scores: dict[str, float] = {}
    lower: frozenset[str] = frozenset()
    if tasks:
        emit(LocateProgress("base", None, n, "base model capability (cached per base model)"))
        base_scores = base_capability(loaded.model, loaded.tokenizer, loaded.fingerprint, tasks,
                                      settings.capability_limit, cache_dir)
        lower = lower_is_better(tasks)
    replay = None
    assert resolved.replay_ratio is not None  # resolve_edit_config fills it
    if resolved.replay_ratio > 0 and resolved.pipeline == "breadth-first":
        from locft.engine.replay import replay_for

        emit(LocateProgress("base", None, n, "base model answers to the replay prompts (cached)"))
        trained_on = [f.prompt for f in sample] + [p for f in sample for p in f.paraphrases]
        replay = replay_for(loaded, resolved, prompt_format, len(sample), exclude=trained_on + probe_prompts,
                            cache_dir=cache_dir)

    results: list[CandidateResult] = []
    for index, loc in enumerate(candidates):
        result = CandidateResult(loc.describe(), loc.template, tuple(loc.layers), current=loc == current)
        results.append(result)
        cfg = replace(resolved, location=loc.template, layers=tuple(loc.layers) or None)

        def on_train(p: Any, index: int = index, label: str = result.location) -> None:
            if p.phase == "train":
                emit(LocateProgress("train", index, n, f"{label}: epoch {p.epoch}/{p.max_epochs}",
                                    p.epoch, p.max_epochs, p.loss))

        emit(LocateProgress("train", index, n, f"{result.location}: training on {len(sample)} facts", 0, epochs))
        t0 = time.perf_counter()
        try:
            trained = edit(loaded, sample, cfg, progress=on_train, should_stop=should_stop, replay=replay)
        except EditCancelled:
            raise
        except LocftError as exc:
            result.error = str(exc)
            log.warning("locate: %s failed: %s", result.location, exc)
            continue
        result.train_seconds = time.perf_counter() - t0
        result.epochs = len(trained.epochs)
        result.final_loss = trained.epochs[-1].mean_loss if trained.epochs else None
        result.converged = trained.converged

        t1 = time.perf_counter()
        emit(LocateProgress("evaluate", index, n, f"{result.location}: reliability, generalization, locality"))
        scope = None
        if settings.scope == "gated":  # from the sample's prompts and subjects only, as a round builds it
            scope = scope_for_facts(loaded, sample, prompt_format, resolved.scope_match,
                                    false_positive_rate=resolved.scope_false_positive_rate, layer=resolved.scope_layer,
                                    tuned_layers=tuned_layer_indices(loaded.model, list(trained.tensors)),
                                    exclude=probe_prompts + [p for f in sample for p in f.paraphrases])
        with answering(loaded, trained.tensors, scope):
            if settings.exact_locality:
                ev = evaluate_edits(loaded, sample, prompt_format, probe_prompts, base_gens, max_new)
                result.locality, result.locality_exact = ev.locality_token, ev.locality_exact
            else:
                ev = evaluate_edits(loaded, sample, prompt_format, (), (), max_new)
                if probe_prompts:
                    per_probe = token_agreement(loaded, probe_prompts, base_gens, prompt_format)
                    result.locality = sum(per_probe) / len(per_probe)
            if tasks:
                emit(LocateProgress("capability", index, n, f"{result.location}: capability ({', '.join(tasks)})"))
                result.capability = measure_capability(loaded.model, loaded.tokenizer, tasks,
                                                       settings.capability_limit, cache_dir)
        result.eval_seconds = time.perf_counter() - t1
        result.reliability = ev.reliability
        result.generalization = ev.generalization
        result.capability_drop = _capability_drop(result.capability, base_scores, lower)
        if should_stop is not None and should_stop():
            raise EditCancelled("locate was cancelled")

    selection = select_from_sweep([r.score() for r in results], settings.tolerances)
    warnings = _warnings(results, selection, settings, epochs)
    return LocateReport(
        candidates=results,
        selection=selection,
        settings=dataclasses.asdict(settings) | {"epochs": epochs},
        edit={k: v for k, v in dataclasses.asdict(resolved).items() if k not in ("location", "layers")},
        model={"source": loaded.source, "fingerprint": loaded.fingerprint,
               "model_type": getattr(loaded.config, "model_type", None),
               "num_hidden_layers": getattr(loaded.config, "num_hidden_layers", None),
               "hidden_size": getattr(loaded.config, "hidden_size", None)},
        n_facts=len(facts),
        n_sample=len(sample),
        n_probes=len(probe_prompts),
        base_capability=base_scores,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )


def _warnings(results: Sequence[CandidateResult], selection: Selection, settings: LocateSettings,
              epochs: int) -> list[str]:
    out = []
    rels = [r.reliability for r in results if r.reliability is not None and not math.isnan(r.reliability)]
    if rels and max(rels) < 0.8:
        out.append(f"no location learned the sample well in {epochs} epochs (best reliability "
                   f"{max(rels):.2f}); the ranking may not hold for a full round: raise --epochs or edit.lr")
    win = results[selection.winner] if selection.winner is not None else None
    if win and settings.min_locality is not None and win.locality is not None and win.locality < settings.min_locality:
        out.append(f"the chosen location's locality {win.locality:.3f} is below gates.min_locality "
                   f"{settings.min_locality}: rounds would be rejected at the locality gate (edit.replay_ratio helps)")
    if len(results) == 1:
        out.append("only one candidate: nothing was compared")
    return out
