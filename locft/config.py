"""Configuration: one schema per section of $LOCFT_HOME/locft.toml, the single source of truth.

Each section is a frozen pydantic dataclass whose fields carry their default, type, rules and
one line of help (`Field(description=...)`); `locft.config_docs` renders the commented
locft.toml that `locft init` writes and the README's reference from them. Unknown keys and wrong
types are errors (a typo must never silently fall back to a default), raised as ConfigError
naming the key, whether the values come from locft.toml or from code (`dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast, get_args

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import dataclass_transform

from locft.config_rules import explain, fields_of
from locft.errors import ConfigError

CONFIG_FILE = "locft.toml"


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # TOML arrays arrive as lists


# TOML's own types, taken as they are: a string is never read as a number, nor 1 as true
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an integer is a number too
Str = Annotated[str, Strict()]
Layer = Annotated[int, Strict(), Field(ge=0)]
Layers = Annotated[tuple[Layer, ...], BeforeValidator(_as_tuple), Field(min_length=1)]
Strings = Annotated[tuple[Str, ...], BeforeValidator(_as_tuple)]

PromptFormat = Literal["auto", "chat", "raw"]
Pipeline = Literal["breadth-first", "depth-first"]
ForwardMode = Literal["cached", "full", "reference"]
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
# float16 names what a float16 model computes in; autocast to it from float32 is refused (it
# would need loss scaling)
COMPUTE_DTYPES: tuple[str, ...] = get_args(ComputeDtype)

_DEVICE = re.compile(r"^(?:auto|cpu|cuda(?::\d+)?)$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

C = TypeVar("C")


@dataclass_transform(frozen_default=True, field_specifiers=(Field, dataclasses.field))
def section(name: str) -> Callable[[type[C]], type[C]]:
    """A section of locft.toml (`name` is "" for the whole file): a frozen pydantic dataclass
    whose construction raises ConfigError naming the key, so code that builds or replaces a
    config (`dataclasses.replace`) is refused with the same message locft.toml would get."""

    def build(cls: type[C]) -> type[C]:
        built = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        validating_init = built.__init__

        @functools.wraps(validating_init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                validating_init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(explain(exc, built, name)) from None

        built.__init__ = __init__  # type: ignore[method-assign]  # wrapped on purpose
        return cast("type[C]", built)  # the same class, made a pydantic dataclass

    return build


def validate_device(spec: str) -> str:
    """`model.device`: auto | cpu | cuda | cuda:N."""
    if not _DEVICE.match(spec):
        raise ConfigError(_device_problem(spec))
    return spec


def _device_problem(spec: str) -> str:
    return f"model.device must be auto, cpu, cuda or cuda:N, got {spec!r}"


@section("model")
class ModelConfig:
    """Which base model."""

    path: Str | None = Field(default=None, examples=["/models/my-hf-model-dir"], description=(
        "the base model: a local Hugging Face directory, a .gguf file, or a model id already in the "
        "local Hugging Face cache (never downloaded); unset: the embedded SmolLM2-135M-Instruct GGUF"))
    gguf_file: Str | None = Field(default=None, examples=["model.Q4_1.gguf"], description=(
        "a .gguf inside `path`, when `path` is a directory"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description=(
        "the dtype the model is loaded in; auto: float32 on the CPU, bfloat16 on CUDA"))
    device: Str = Field(default="auto", description=(
        "auto, cpu, cuda or cuda:N; auto: a GPU when torch sees one, and a model too large for one "
        "GPU spread over all visible GPUs (accelerate's device_map=\"auto\")"))

    @field_validator("path")
    @classmethod
    def _path_not_blank(cls, path: str | None) -> str | None:
        if path is not None and not path.strip():
            raise ValueError("model.path is empty; remove it to use the embedded model")
        return path

    @field_validator("device")
    @classmethod
    def _known_device(cls, spec: str) -> str:
        if not _DEVICE.match(spec):
            raise ValueError(_device_problem(spec))
        return spec


@section("edit")
class EditConfig:
    """How LocFT-BF edits. A key unset by default is resolved per model when a round starts
    (engine.targets)."""

    location: Str | None = Field(default=None, examples=["model.layers.{L}.mlp.down_proj.weight"], description=(
        "where to edit: a parameter-name template ({L} = a layer number) or a module name; unset: "
        "chosen per architecture (`locft locate` measures the candidates)"))
    layers: Layers | None = Field(default=None, examples=[(21, 22)], description=(
        "the layers {L} stands for; unset: per architecture, and for some models another set in "
        "rounds over many facts"))
    prompt_format: PromptFormat = Field(default="auto", description=(
        "how a prompt is shown to the model, the same in training and asking; auto: the chat "
        "template when the model has one"))
    lr: Float | None = Field(default=None, gt=0, lt=1, examples=[5e-3], description=(
        "learning rate; unset: measured per model, else the paper's 5e-4"))
    batch_size: Int | None = Field(default=None, ge=1, examples=[32], description=(
        "facts per optimizer step; unset: measured per model, else the paper's 100"))
    max_epochs: Int = Field(default=25, ge=1, description="passes over the facts, at most")
    skip_loss: Float = Field(default=1e-2, ge=0, description="a batch whose loss is already below this is skipped")
    stop_loss: Float = Field(default=1e-2, ge=0, description="training stops when an epoch's mean loss is below this")
    seed: Int = Field(default=0, description="the seed of a round's training")
    pipeline: Pipeline = Field(default="breadth-first", description=(
        "breadth-first: LocFT-BF, every fact in every epoch; depth-first: each fact alone, in turn "
        "(the baseline)"))
    forward_mode: ForwardMode = Field(default="cached", description=(
        "cached: activations below the tuned layer computed once (exact); full: every forward from "
        "the embeddings; reference: the paper's loop (full forward, logits at every position)"))
    max_new_tokens: Int = Field(default=32, ge=1, description="generation budget when evaluating edits")
    # engine/replay.py: locality-preserving replay
    replay_ratio: Float | None = Field(default=None, ge=0, examples=[1.5], description=(
        "replay: generic prompts per fact in a batch, trained towards the base model's own answers; "
        "0: off (the paper's recipe); unset: measured per model, else off"))
    replay_weight: Float | None = Field(default=None, ge=0, examples=[1.0], description=(
        "weight of the replay loss beside the edit loss; unset: 1, or a model's measured weight for "
        "rounds over many facts"))
    # decoupled, like AdamW's decay but towards the base instead of zero: a smaller change of the
    # tuned matrices flips fewer unrelated answers
    delta_decay: Float = Field(default=0.0, ge=0, description=(
        "pull towards the base weights after every optimizer step (change *= 1 - lr * delta_decay, "
        "with lr * delta_decay < 1); 0: off (the paper); breadth-first only"))
    null_space_energy: Float = Field(default=0.0, ge=0, lt=1, description=(
        "keep the change out of the input directions holding this share of the replay prompts' "
        "input energy (engine.null_space, AlphaEdit's projection); needs replay; 0: off"))
    # a pool that grows with the facts kept more locality at 1,000 facts (docs/experiments/quality/)
    replay_pool_size: Int | None = Field(default=None, ge=1, examples=[1000], description=(
        "distinct replay prompts (their base answers cached per base model); unset: one per fact, "
        "at least 400 and at most 2,000"))
    replay_max_tokens: Int = Field(default=16, ge=1, description=(
        "length of the base model's continuations used as replay targets"))
    replay_pool: Literal["questions", "mixed"] = Field(default="mixed", description=(
        "questions: NQ-open and TriviaQA questions; mixed: questions, search queries, sentence "
        "openings and instructions"))
    # lm-eval's capability tasks and completion APIs send plain text, which chat-format replay
    # never shows the model
    replay_raw_share: Float = Field(default=0.0, ge=0, le=1, description=(
        "share of the replay prompts asked as plain text, without the chat template, when edits "
        "train in the chat format; 0: all replay in the training format"))
    replay_qa_share: Float | None = Field(default=None, ge=0, le=1, examples=[0.3333], description=(
        "share of the replay pool that is plain-text reference question-answer pairs (as lm-eval "
        "scores choices), trained towards the base model's distribution at each answer token; needs "
        "replay_target = \"distribution\"; unset: measured per model, else 0"))
    replay_target: Literal["tokens", "distribution"] = Field(default="distribution", description=(
        "what a replay position is trained towards: distribution (KL to the base model's top "
        "replay_top_k next-token probabilities, renormalized) or tokens (its greedy token)"))
    replay_top_k: Int = Field(default=32, ge=1, description=(
        "next-token probabilities of the base model kept per replay position"))
    # one copy is what lets COUNTERFACT-style paraphrases (an unrelated sentence, then the
    # question) generalize; more copies multiply the rows of every epoch (bench/results/scope)
    augment_prefixes: Int = Field(default=1, ge=0, description=(
        "the paper's augmentation: each fact is also trained behind this many unrelated sentences "
        "(engine.augment); 0: off; breadth-first only"))
    # a step keeps its activations for backward, so these bound activation memory
    micro_batch_size: Int | None = Field(default=None, ge=1, examples=[32], description=(
        "rows (facts and replay prompts) per forward/backward pass; a larger batch accumulates the "
        "gradients of several passes; unset: 32 on the CPU, sized from free memory on CUDA"))
    micro_batch_tokens: Int | None = Field(default=None, ge=1, examples=[1024], description=(
        "padded tokens per forward/backward pass, at most (a longer row runs alone); unset: 1,024 "
        "on the CPU, sized from free memory on CUDA"))
    compute_dtype: ComputeDtype = Field(default="auto", description=(
        "dtype of the training forward/backward (autocast; the tuned tensor and Adam's state keep "
        "the model's); auto: bfloat16 where the device computes it natively, else float32 (the "
        "paper's recipe)"))
    scope_match: Literal["subject", "similarity", "either"] = Field(default="subject", description=(
        "which prompts a version's edits answer when serve.scope = \"gated\": subject (the prompt "
        "names a fact's subject), similarity (the base model's representation of the prompt is "
        "near a fact prompt's) or either"))
    scope_false_positive_rate: Float = Field(default=0.01, gt=0, lt=1, description=(
        "similarity: the share of generic prompts the calibrated threshold lets in"))
    scope_layer: Int | None = Field(default=None, examples=[8], description=(
        "similarity: the decoder layer whose output is pooled; unset: about 27% of the depth"))

    @model_validator(mode="after")
    def _consistent(self) -> EditConfig:
        if self.location is not None and "{L}" not in self.location and self.layers:
            raise ValueError("edit.layers is set but edit.location has no {L} placeholder")
        if self.lr is not None and self.lr * self.delta_decay >= 1:
            raise ValueError(f"edit.delta_decay must keep lr * delta_decay < 1, got {self.delta_decay}")
        if self.replay_qa_share and self.replay_target != "distribution":
            raise ValueError("edit.replay_qa_share needs replay_target = 'distribution': with 'tokens' "
                             "the model would learn the reference answers instead of keeping its own")
        return self

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@section("gates")
class GatePolicy:
    """Thresholds a candidate version must pass before promotion (absolute and vs promoted)."""

    promotion: Literal["auto", "manual"] = Field(default="auto", description=(
        "auto: promote a candidate when every gate passes; manual: wait for `locft promote`"))
    min_reliability: Float = Field(default=0.95, ge=0, le=1, description=(
        "share of the facts the candidate must answer as taught"))
    min_generalization: Float | None = Field(default=None, ge=0, le=1, examples=[0.5], description=(
        "share of the facts' paraphrases it must answer; unset: reported, not gated"))
    min_locality: Float = Field(default=0.80, ge=0, le=1, description=(
        "token-level agreement with the base model on the probe prompts"))
    max_retention_drop: Float = Field(default=0.02, ge=0, le=1, description=(
        "largest drop in the facts the promoted version knew that are still active"))
    max_capability_drop: Float = Field(default=0.02, ge=0, le=1, description=(
        "largest lm-eval score drop against the base model (absolute)"))
    capability_tasks: Strings = Field(default=("arc_easy", "piqa"), description=(
        "the capability gate's tasks: built-in names (`locft config check` names the known ones) "
        "or any lm-eval task as lm_eval:<task>[:<metric>[,<filter>]]"))
    # 200 items cannot resolve a 2-point drop (docs/experiments/quality/capability_gate_rules.md)
    capability_limit: Int | None = Field(default=2000, ge=1, description=(
        "the first N items of each task (2,000 covers ARC-Easy and PIQA whole)"))
    # tasks without per-item scores (wiki_bpb, lm_eval:*) use point
    capability_test: Literal["paired", "point"] = Field(default="paired", description=(
        "paired: a drop over max_capability_drop fails only when it is also significant (one-sided "
        "exact sign test on the items that changed answer, p < capability_alpha); point: any drop "
        "over it fails"))
    capability_alpha: Float = Field(default=0.05, gt=0, lt=1, description="significance level of the paired test")
    reliability_sample: Int = Field(default=2000, description=(
        "above this many active facts, a seeded sample of them is measured"))
    probe_set_size: Int = Field(default=100, description="fixed probe prompts recorded from the base model")


@section("schedule")
class ScheduleConfig:
    """When rounds run: a cron expression, a pending-facts trigger, explicit requests."""

    cron: Str | None = Field(default="0 2 * * *", description=(
        "when rounds run: a cron expression (minute hour day month weekday, local time); \"off\": "
        "no scheduled rounds"))
    min_pending_facts: Int | None = Field(default=None, ge=1, examples=[50], description=(
        "also run a round as soon as this many facts wait; unset: off"))
    poll_seconds: Float = Field(default=5.0, gt=0, description="how often requests and pending facts are checked")
    misfire_grace_seconds: Int = Field(default=6 * 3600, description=(
        "a scheduled round missed while the daemon was down still runs within this many seconds"))
    round_timeout_seconds: Int = Field(default=6 * 3600, description="a round running longer is stopped")

    @field_validator("cron", mode="before")
    @classmethod
    def _off(cls, cron: Any) -> Any:
        # TOML has no null, so "off" is how a user without a nightly round writes it
        return None if isinstance(cron, str) and cron.strip().lower() in ("off", "none", "") else cron

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str | None) -> str | None:
        if cron is not None and len(cron.split()) != 5:
            raise ValueError(f"schedule.cron must have 5 fields (min hour day month weekday), got {cron!r}")
        return cron


@section("serve")
class ServeConfig:
    """The HTTP server (`locft serve`, the daemon's API)."""

    host: Str = Field(default="127.0.0.1", description="the address to listen on; other than loopback needs api_token")
    port: Int = Field(default=8765, ge=1, le=65535, description="the port to listen on")
    api_token: Str | None = Field(default=None, examples=["..."], description=(
        "the bearer token clients must send; required when host is not loopback"))
    max_prompt_chars: Int = Field(default=8000, description="the longest prompt accepted, in characters")
    max_tokens_limit: Int = Field(default=512, description="the most tokens a request may ask for")
    max_batch_size: Int = Field(default=8, ge=1, description="concurrent requests answered by one generate call")
    # rounds train in another process beside the server, so it takes half the cores
    threads: Int | None = Field(default=None, ge=1, examples=[1], description=(
        "torch threads for generation; unset: half the CPU cores"))
    scope: Literal["gated", "always"] = Field(default="gated", description=(
        "gated: a version's edits answer only the prompts in its scope (engine.scope), every other "
        "prompt gets the base model exactly; always: every prompt (the paper). Everything that "
        "answers as a version follows it: ask, the API, the gates, capability, bench"))

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServeConfig:
        if self.host not in _LOOPBACK and not self.api_token:
            raise ValueError(f"serve.host {self.host!r} is not loopback: set serve.api_token too")
        return self


@section("store")
class StoreConfig:
    """The knowledge store and snapshot retention."""

    database_url: Str | None = Field(default=None, examples=["postgresql://locft@db.internal/locft"], description=(
        "the store's SQLAlchemy URL; unset: sqlite:///$LOCFT_HOME/locft.db"))
    keep_promoted: Int = Field(default=5, ge=1, description="promoted snapshots kept for rollback")
    keep_rejected: Int = Field(default=3, ge=0, description="rejected snapshots kept")


@section("")
class LocftConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    edit: EditConfig = dataclasses.field(default_factory=EditConfig)
    gates: GatePolicy = dataclasses.field(default_factory=GatePolicy)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)


# (FieldInfo.annotation is typed Optional; every section has one)
SECTIONS: dict[str, type] = {name: info.annotation for name, info in fields_of(LocftConfig).items()}  # type: ignore[misc]


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a config (the whole file, or one section named `where`) from plain data such as
    parsed TOML; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    try:
        # mypy does not count type[T] as Hashable (functools.cache needs that); a class is
        adapter: TypeAdapter[T] = _adapter(cast(type, cls))
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, cls, where)) from None


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def to_dict(obj: Any) -> dict[str, Any]:
    """A config section as JSON-ready data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def parse_setting(text: str) -> tuple[str, Any]:
    """'key=value' from a command line (--set); the value is read as TOML, and a bare word that
    is not TOML (e.g. mixed) is taken as a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. replay_pool_size=1000), got {text!r}")
    try:
        return key, tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return key, raw


def with_settings(cfg: T, settings: dict[str, Any], where: str) -> T:
    """A copy of a config section with some keys replaced, validated like locft.toml is."""
    return from_dict(type(cfg), {**to_dict(cfg), **settings}, where)


def check_home_path(path: Path, source: str) -> Path:
    """`path` as a home: a directory, or nothing yet (`locft init` creates it); never a file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{source} {path} is not a directory; a locft home is a directory "
                          "(`locft init` creates it)")
    return path


def default_home() -> Path:
    """$LOCFT_HOME, else the user data dir (~/.local/share/locft on Linux)."""
    env = os.environ.get("LOCFT_HOME")
    if env:
        return check_home_path(Path(env).expanduser().resolve(), "LOCFT_HOME")
    from platformdirs import user_data_dir

    return Path(user_data_dir("locft", appauthor=False))


def load_config(home: Path | None = None) -> LocftConfig:
    """Read $LOCFT_HOME/locft.toml; a missing file means all defaults."""
    home = home or default_home()
    path = home / CONFIG_FILE
    if not path.exists():
        return LocftConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return from_dict(LocftConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def __getattr__(name: str) -> Any:
    # CONFIG_TEMPLATE, what `locft init` writes, is rendered from the schemas above on first use
    if name == "CONFIG_TEMPLATE":
        from locft.config_docs import config_template

        return config_template()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
