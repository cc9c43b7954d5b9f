"""`locft locate` as a library call: a short sweep that picks the edit location for a model.

For each candidate location (by default the MLP output projection at six depths spread over
the model, plus the current one), LocFT-BF trains on a seeded sample of the facts, from the
base weights each time (the [edit] recipe, with the batch shrunk so that an epoch has a few
steps), and the edited model is measured:

- general capability: lm-eval tasks (default wiki_bpb, bits per byte on 50 Wikipedia
  passages: the most sensitive of the offline suite, docs/experiments/quality/locate_embedded.md),
  candidate vs the base model's score (computed once, cached per base fingerprint); the worst
  task's drop counts;
- locality: token agreement with the base model's own answers on the fixed probe set plus
  the sample's own probes (base answers cached per base fingerprint); exact locality
  (a generation per probe) on request;
- reliability and generalization: greedy generation + normalized exact match on the sample's
  prompts and paraphrases.

`locft.policies.location.choose_location` then applies the paper's priority (capability,
then locality, then generalization). `record_location` writes the pick into locft.toml,
keeping every other line as it was. Importing this module does not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib  # type: ignore[no-redef]

from locft.atomic import atomic_write_text
from locft.config import CONFIG_TEMPLATE, EditConfig, LocftConfig, from_dict
from locft.errors import ConfigError, LocationError, LocftError
from locft.facts import EditFact
from locft.policies.location import CandidateScore, LocateTolerances, Selection, choose_location

if TYPE_CHECKING:
    import torch

    from locft.engine.model_io import LoadedModel
    from locft.engine.targets import EditLocation

log = logging.getLogger(__name__)

# Depths of the default sweep, as fractions of the layer range [0, n-1]: six points from near
# the bottom to near the top (the paper's own picks sit at 21% and 69-72% of depth).
DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
# `locft locate --write` refuses to record a pick when even the winner learned fewer of the
# sampled edits than this: the sweep then compared locations that did not edit anything.
MIN_RELIABILITY_TO_RECORD = 0.5
# MLP output projections by naming family (Llama/Qwen/Mistral, GPT-2, GPT-NeoX, OPT/BART).
_MLP_OUT_SUFFIXES = (".mlp.down_proj.weight", ".mlp.c_proj.weight", ".mlp.dense_4h_to_h.weight", ".fc2.weight")


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


ProgressCallback = Callable[[LocateProgress], None]


@dataclass
class CandidateResult:
    """One location's numbers (None = not measured)."""

    location: str  # EditLocation.describe(), e.g. model.layers.8.mlp.down_proj.weight
    template: str
    layers: tuple[int, ...]
    current: bool = False  # the location the config resolves to now
    reliability: float | None = None
    generalization: float | None = None
    locality: float | None = None  # token-level
    locality_exact: float | None = None
    capability: dict[str, float] = field(default_factory=dict)
    capability_drop: float | None = None  # worst task, gate convention
    epochs: int = 0
    final_loss: float | None = None
    converged: bool = False
    train_seconds: float = 0.0  # activation cache + training
    eval_seconds: float = 0.0  # generation + token locality + capability
    error: str | None = None

    def score(self) -> CandidateScore:
        return CandidateScore(self.location, self.reliability, self.generalization, self.locality,
                              self.capability_drop, self.error)


@dataclass
class LocateReport:
    candidates: list[CandidateResult]
    selection: Selection
    settings: dict[str, Any]
    edit: dict[str, Any]  # the recipe every candidate used (lr, batch size, prompt format, ...)
    model: dict[str, Any]  # source, fingerprint, architecture
    n_facts: int  # available
    n_sample: int
    n_probes: int
    base_capability: dict[str, float]
    warnings: list[str]
    seconds: float

    @property
    def winner(self) -> CandidateResult | None:
        i = self.selection.winner
        return None if i is None else self.candidates[i]

    def why_not_recordable(self) -> str | None:
        """None when the pick may be written to locft.toml, else the reason it may not."""
        w = self.winner
        if w is None:
            return "no location qualified (every candidate failed)"
        if w.reliability is None or w.reliability < MIN_RELIABILITY_TO_RECORD:
            return (f"the chosen location learned only {_f(w.reliability)} of the sampled edits "
                    f"(< {MIN_RELIABILITY_TO_RECORD}): the sweep compared locations that edited "
                    f"nothing; raise --epochs (or edit.lr) and run again")
        return None

    def to_dict(self) -> dict[str, Any]:
        def safe(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, dict):
                return {k: safe(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [safe(x) for x in v]
            return v

        return safe({
            "winner": self.winner.location if self.winner else None,
            "winner_template": self.winner.template if self.winner else None,
            "winner_layers": list(self.winner.layers) if self.winner else None,
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
            "selection": self.selection.to_dict(),
            "settings": self.settings, "edit": self.edit, "model": self.model,
            "n_facts": self.n_facts, "n_sample": self.n_sample, "n_probes": self.n_probes,
            "base_capability": self.base_capability, "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
        })


# ---------------------------------------------------------------------------------------------
# candidates


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{L}"), r"(\d+)") + "$")


def available_layers(model: torch.nn.Module, template: str) -> list[int]:
    """Layer numbers L for which `template` names a parameter or a module of `model`."""
    if "{L}" not in template:
        return []
    pattern = _template_regex(template)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_modules()]
    return sorted({int(m[1]) for n in names if (m := pattern.match(n))})


def mlp_out_template(model: torch.nn.Module) -> str:
    """The model's MLP output projection as a template (the paper's and locft's usual location)."""
    from locft.engine.targets import candidate_templates

    templates = candidate_templates(model)
    found = [t for t in templates if "{L}" in t and t.endswith(_MLP_OUT_SUFFIXES)]
    if not found:
        raise LocationError(
            "no MLP output projection found to sweep; name a template with --template, one of: "
            + ", ".join(templates[:16]) + (" ..." if len(templates) > 16 else "")
        )
    return max(found, key=lambda t: len(available_layers(model, t)))


def spread_layers(layers: Sequence[int], depths: Sequence[float] = DEFAULT_DEPTHS) -> list[int]:
    """Layers at the given fractions of the range (deduplicated, ascending)."""
    ordered = sorted(set(layers))
    if not ordered:
        return []
    picks = {ordered[min(len(ordered) - 1, round(f * (len(ordered) - 1)))] for f in depths}
    return sorted(picks)


def build_candidates(
    model: torch.nn.Module,
    current: EditLocation | None = None,
    templates: Sequence[str] = (),
    layers: Sequence[int] = (),
    depths: Sequence[float] = DEFAULT_DEPTHS,
) -> list[EditLocation]:
    """The sweep's locations, each resolved against the model now (errors before any training).

    templates × layers; no templates: the MLP output projection; no layers: the template's
    layers spread by `depths`. A template without {L} is one candidate. The current location
    joins a default sweep (no --layers) when it is not already in it, so that the report
    compares the pick with what rounds use now.
    """
    from locft.engine.targets import EditLocation, resolve_location

    out: list[EditLocation] = []
    for template in (list(templates) or [mlp_out_template(model)]):
        if "{L}" not in template:
            out.append(EditLocation(template, ()))
            continue
        have = available_layers(model, template)
        if not have:
            raise LocationError(f"template {template!r} names no parameter or module of this model")
        if layers:
            missing = [layer for layer in layers if layer not in have]
            if missing:
                raise LocationError(
                    f"layer(s) {', '.join(map(str, missing))} do not exist for {template!r} "
                    f"(it has layers {have[0]}..{have[-1]})"
                )
            chosen = list(dict.fromkeys(layers))
        else:
            chosen = spread_layers(have, depths)
        out.extend(EditLocation(template, (layer,)) for layer in chosen)
    for loc in out:
        resolve_location(model, loc)  # LocationError now, not after an hour of training
    if current is not None and not layers and current not in out:
        try:
            resolve_location(model, current)
            out.append(current)
        except LocationError as exc:  # a broken [edit] location is what locate is run to fix
            log.warning("the configured location is left out of the sweep: %s", exc)
    return list(dict.fromkeys(out))


def sample_facts(facts: Sequence[EditFact], n: int, seed: int) -> list[EditFact]:
    """All facts, or a seeded sample of `n` (same facts + seed -> same sample, in file order)."""
    if len(facts) <= n:
        return list(facts)
    picked = sorted(random.Random(seed).sample(range(len(facts)), n))
    return [facts[i] for i in picked]


# ---------------------------------------------------------------------------------------------
# the sweep


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
    progress: ProgressCallback | None = None,
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
    from locft.engine.targets import resolve_location
    from locft.engine.scope import scope_for_facts, scoped_edit_defaults
    from locft.engine.scoped import answering, tuned_layer_indices
    from locft.engine.resolve import resolve_edit_config
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

    selection = choose_location([r.score() for r in results], settings.tolerances)
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


# ---------------------------------------------------------------------------------------------
# recording the pick in locft.toml

NOTE = "locft locate"  # the comment above a recorded location: "# locft locate: <note>"


def location_lines(template: str, layers: Sequence[int]) -> list[str]:
    """The [edit] lines that name a location (what an operator pastes by hand)."""
    import json

    lines = [f"location = {json.dumps(template, ensure_ascii=False)}"]
    if "{L}" in template:
        lines.append(f"layers = [{', '.join(str(int(x)) for x in layers)}]")
    return lines


def set_location_text(text: str, template: str, layers: Sequence[int], note: str | None = None) -> str:
    """`text` (a locft.toml) with [edit] location/layers set; everything else kept as written
    (tomlkit keeps comments and layout).

    Earlier `location` / `layers` keys of [edit] and earlier `# locft locate` notes there are
    replaced; the new lines go where the old `location` key was (or its note), else right under
    [edit] (which is appended when missing). The result is checked by parsing: apart from the
    two keys it must mean exactly what `text` meant, else ConfigError (nothing is written).
    """
    import tomlkit
    from tomlkit.container import Container
    from tomlkit.exceptions import TOMLKitError
    from tomlkit.items import Comment, Table
    from tomlkit.toml_document import TOMLDocument

    try:
        before = tomllib.loads(text)
        doc = tomlkit.parse(text if text.endswith("\n") or not text else text + "\n")
    except (tomllib.TOMLDecodeError, TOMLKitError) as exc:
        raise ConfigError(f"locft.toml does not parse ({exc}); fix it before recording a location") from None
    block = location_lines(template, layers)
    new_items: list[tuple[str | None, Any]] = [(None, tomlkit.comment(f"{NOTE}: {note}"))] if note else []
    new_items.append(("location", tomlkit.item(template)))
    if "{L}" in template:
        new_items.append(("layers", tomlkit.item([int(x) for x in layers])))

    def refuse() -> ConfigError:
        return ConfigError(
            "could not update locft.toml automatically (its [edit] table is written in a way this "
            "editor does not handle); set these lines in [edit] yourself:\n  " + "\n  ".join(block))

    old = doc.get("edit")
    if old is None:
        if doc.body:
            doc.add(tomlkit.nl())
        table = tomlkit.table()
        for key, item in new_items:
            table.raw_append(key, item)
        doc.add("edit", table)
    elif isinstance(old, Table) and not old.is_super_table():  # a plain [edit] header
        kept: list[tuple[Any, Any]] = []  # (tomlkit Key or None, item): keys keep their spelling
        at = 0
        for key, item in old.value.body:
            if key is None and isinstance(item, Comment) and item.as_string().lstrip().startswith(f"# {NOTE}"):
                continue
            if key is not None and key.key in ("location", "layers"):
                if key.key == "location":  # the new lines go here (where its note was, if any)
                    at = len(kept)
                continue
            kept.append((key, item))
        # Rebuilt the way tomlkit's parser builds a document (parsed=True: appending adds no
        # cosmetic blank lines), so every other item renders exactly as it was read.
        table = Table(Container(True), old.trivia, is_aot_element=False)
        for key, item in kept[:at] + new_items + kept[at:]:
            table.raw_append(key, item)
        rebuilt = TOMLDocument(True)
        for key, item in doc.body:
            rebuilt.append(key, table if item is old else item)
        doc = rebuilt
    else:  # dotted keys (edit.lr = ...), an inline table, [edit] split around other tables
        raise refuse()
    new_text = tomlkit.dumps(doc)

    expected = copy.deepcopy(before)
    edit_table = expected.setdefault("edit", {})
    edit_table["location"] = template
    if "{L}" in template:
        edit_table["layers"] = [int(x) for x in layers]
    else:
        edit_table.pop("layers", None)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise refuse()
    from_dict(LocftConfig, after)  # ConfigError if the result is not a valid config
    return new_text


def record_location(config_path: Path, template: str, layers: Sequence[int], note: str | None = None) -> bool:
    """Write [edit] location/layers into `config_path` atomically; False when already so.

    A missing file starts from the commented template `locft init` writes. The file's
    permissions are kept.
    """
    config_path = Path(config_path)
    try:
        text = config_path.read_text(encoding="utf-8")
        mode = config_path.stat().st_mode & 0o7777
    except FileNotFoundError:
        text, mode = CONFIG_TEMPLATE, None
    try:
        current = tomllib.loads(text).get("edit", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: {exc}; fix it before recording a location") from None
    wanted_layers = [int(x) for x in layers] if "{L}" in template else None
    if current.get("location") == template and current.get("layers") == wanted_layers:
        return False
    new_text = set_location_text(text, template, layers, note)
    # Someone may have edited the file while the sweep ran: never overwrite their change.
    now = config_path.read_text(encoding="utf-8") if config_path.exists() else CONFIG_TEMPLATE
    if now != text:
        raise ConfigError(f"{config_path} changed while locate was writing it; run again")
    atomic_write_text(config_path, new_text)
    if mode is not None:
        os.chmod(config_path, mode)
    return True


def note_for(report: LocateReport) -> str:
    """The one-line comment recorded above the location: when, on what, with which numbers."""
    w = report.winner
    assert w is not None
    today = _dt.date.today().isoformat()
    others = [",".join(map(str, c.layers)) if c.layers else c.location for c in report.candidates]
    nums = [f"reliability {_f(w.reliability)}", f"locality {_f(w.locality)}",
            f"generalization {_f(w.generalization)}"]
    if w.capability_drop is not None:
        nums.insert(0, f"capability drop {_f(w.capability_drop)}")
    return (f"{today}, {report.n_sample} facts x {report.settings['epochs']} epochs, "
            f"candidates {'; '.join(others)}: " + ", ".join(nums))


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
