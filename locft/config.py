"""Configuration: one frozen dataclass per concern, loaded from $LOCFT_HOME/locft.toml.

Unknown keys and wrong types are errors (a typo must never silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib  # type: ignore[no-redef]

from locft.errors import ConfigError

CONFIG_FILE = "locft.toml"

PromptFormat = Literal["auto", "chat", "raw"]
Pipeline = Literal["breadth-first", "depth-first"]
ForwardMode = Literal["cached", "full", "reference"]


@dataclass(frozen=True)
class ModelConfig:
    """Which base model. `path` None means the embedded SmolLM2-135M-Instruct GGUF; else a local HF
    directory, a .gguf file, or a model id already in the local Hugging Face cache (never downloaded)."""

    path: str | None = None
    gguf_file: str | None = None  # a .gguf inside `path`, when `path` is a directory
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on CUDA
    # auto | cpu | cuda | cuda:N. auto: a GPU when torch sees one, and a model too large for one
    # GPU spread over all visible GPUs (accelerate's device_map="auto"; engine.device)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.path is not None and not str(self.path).strip():
            raise ConfigError("model.path is empty; remove it to use the embedded model")
        validate_device(self.device)


_DEVICE = re.compile(r"^(?:auto|cpu|cuda(?::\d+)?)$")


def validate_device(spec: str) -> str:
    """`model.device`: auto | cpu | cuda | cuda:N."""
    if not _DEVICE.match(spec):
        raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


# float16 names what a float16 model computes in; autocast to it from float32 is refused (it
# would need loss scaling)
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EditConfig:
    """How LocFT-BF edits. Defaults `None` are resolved per model (see engine.targets)."""

    # where: a parameter-name template ({L} = layer) or a module name; None = per-architecture default
    location: str | None = None
    layers: tuple[int, ...] | None = None
    # how the prompt is shown to the model, for training AND asking (they must agree)
    prompt_format: PromptFormat = "auto"
    lr: float | None = None  # None: 5e-4 (paper) for unknown models, the measured value for the embedded one
    batch_size: int | None = None  # None: measured per model (32 for the embedded one), else 100 (paper)
    max_epochs: int = 25
    skip_loss: float = 1e-2  # skip a batch whose loss is already below this
    stop_loss: float = 1e-2  # stop when an epoch's mean loss is below this
    seed: int = 0
    pipeline: Pipeline = "breadth-first"
    # cached: activations below the tuned layer computed once (exact); full: every forward from the
    # embeddings; reference: the paper's loop (full forward, logits at every position)
    forward_mode: ForwardMode = "cached"
    max_new_tokens: int = 32  # generation budget for evaluation
    # locality-preserving replay (engine/replay.py): per fact in a batch, this many generic
    # prompts with the base model's own answers as targets; 0 turns it off; None: measured per
    # model (1.0 for the embedded one, off for models nobody measured)
    replay_ratio: float | None = None
    # weight of the replay loss next to the edit loss; None: 1, or the measured large-fact-set
    # weight where the round trains that setting's location (engine.targets: 2 for the embedded
    # model's three layers from 1,000 facts on, which keeps the locality the third layer costs)
    replay_weight: float | None = None
    # pull towards the base weights after every optimizer step: change *= 1 - lr * delta_decay
    # (decoupled, like AdamW's decay but towards the base instead of zero). A smaller change of
    # the tuned matrices flips fewer unrelated answers; 0 = off (the paper). Breadth-first only
    delta_decay: float = 0.0
    # keep the change out of the input directions that hold this share of the replay prompts'
    # input energy (engine.null_space; AlphaEdit's projection); needs replay; 0 = off. At 100
    # facts 0.5 moved nothing beyond noise and 0.9 stopped edits landing (docs/experiments/quality/)
    null_space_energy: float = 0.0
    # distinct replay prompts (base answers cached per base model); None: one per fact, at least
    # 400 and at most 2000 (engine.replay.replay_pool_size: a pool that grows with the facts kept
    # more locality at N=1000, docs/experiments/quality/)
    replay_pool_size: int | None = None
    replay_max_tokens: int = 16  # length of the base continuations used as replay targets
    replay_pool: str = "mixed"  # "questions" (NQ-open, TriviaQA) or "mixed" (four prompt styles)
    # share of the replay prompts asked as plain text, without the chat template, when the edits
    # train in the chat format: lm-eval's capability tasks and completion APIs send plain text,
    # which chat-format replay never shows the model; 0 = all replay in the training format
    replay_raw_share: float = 0.0
    # share of the replay pool that is reference question-answer pairs in plain text ("Question:
    # ...\nAnswer: <answer>", how lm-eval scores answer choices), trained towards the base model's
    # distribution at each answer token (engine.replay.reference_qa_items); needs
    # replay_target = "distribution" (tokens would teach those answers); 0 = off; None: measured
    # per model (1/3 for the embedded one, off for others; 0 with replay_target = "tokens")
    replay_qa_share: float | None = None
    # what a replay position is trained towards: "tokens" (cross-entropy on the base model's greedy
    # token) or "distribution" (KL to the base model's next-token distribution, its top
    # replay_top_k probabilities, renormalized): the latter keeps the base's uncertainty too
    replay_target: str = "distribution"
    replay_top_k: int = 32
    # the paper's augmentation for generalization: each fact is also trained behind this many
    # unrelated sentences (engine.augment), sampled per fact; 0 = off. Breadth-first only
    augment_prefixes: int = 0
    # rows (facts + replay prompts) per forward/backward pass; a larger batch accumulates the
    # gradients of several passes (the same step), so activation memory is bounded by this
    micro_batch_size: int | None = None  # None: 32 on the CPU, sized from free memory on CUDA (engine.device)
    # and at most this many padded tokens per pass (rows x the longest row's tokens run above the
    # activation cache): a step keeps its activations for backward, so on the embedded model the
    # largest rise within a step was 1.0 GiB without this bound and 0.55 with it, at no cost in
    # speed (docs/experiments/quality/phase_memory.jsonl)
    micro_batch_tokens: int | None = None  # None: 1,024 on the CPU, sized from free memory on CUDA
    # the dtype of the training forward/backward (autocast); the tuned tensor, its gradient and
    # Adam's state keep the model's dtype. "auto": bfloat16 where the device computes it natively
    # (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else float32; "float32" is the paper's recipe.
    # Measured on the embedded model (docs/experiments/quality/): the same metrics, 1.8x faster on CPU
    compute_dtype: str = "auto"
    # which prompts a version's edits apply to (engine.scope), built in each round from the facts'
    # prompts and subjects: "subject" (the prompt names a fact's subject), "similarity" (the base
    # model's representation of the prompt is near a fact prompt's) or "either". Used when
    # serve.scope = "gated"
    scope_match: str = "subject"
    # similarity: the share of generic prompts (no gate uses them) the calibrated threshold lets in
    scope_false_positive_rate: float = 0.01
    scope_layer: int | None = None  # similarity: the decoder layer pooled; None: ~27% of the depth

    def __post_init__(self) -> None:
        if self.scope_match not in ("subject", "similarity", "either"):
            raise ConfigError(f"edit.scope_match must be subject, similarity or either, got {self.scope_match!r}")
        if not 0 < self.scope_false_positive_rate < 1:
            raise ConfigError(f"edit.scope_false_positive_rate must be in (0, 1), got {self.scope_false_positive_rate}")
        if self.lr is not None and not (0 < self.lr < 1):
            raise ConfigError(f"edit.lr must be in (0, 1), got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"edit.batch_size must be >= 1, got {self.batch_size}")
        if self.max_epochs < 1:
            raise ConfigError(f"edit.max_epochs must be >= 1, got {self.max_epochs}")
        if self.skip_loss < 0 or self.stop_loss < 0:
            raise ConfigError("edit.skip_loss and edit.stop_loss must be >= 0")
        if self.layers is not None:
            if not self.layers or any(layer < 0 for layer in self.layers):
                raise ConfigError(f"edit.layers must be non-negative layer numbers, got {list(self.layers)}")
        if self.location is not None and "{L}" not in self.location and self.layers:
            raise ConfigError("edit.layers is set but edit.location has no {L} placeholder")
        if self.max_new_tokens < 1:
            raise ConfigError("edit.max_new_tokens must be >= 1")
        if self.delta_decay < 0 or (self.lr is not None and self.lr * self.delta_decay >= 1):
            raise ConfigError(f"edit.delta_decay must be >= 0 and lr * delta_decay < 1, got {self.delta_decay}")
        if not 0 <= self.null_space_energy < 1:
            raise ConfigError(f"edit.null_space_energy must be in [0, 1), got {self.null_space_energy}")
        if ((self.replay_ratio is not None and self.replay_ratio < 0)
                or (self.replay_weight is not None and self.replay_weight < 0)):
            raise ConfigError("edit.replay_ratio and edit.replay_weight must be >= 0")
        if (self.replay_pool_size is not None and self.replay_pool_size < 1) or self.replay_max_tokens < 1:
            raise ConfigError("edit.replay_pool_size and edit.replay_max_tokens must be >= 1")
        if self.replay_target not in ("tokens", "distribution"):
            raise ConfigError(f"edit.replay_target must be 'tokens' or 'distribution', got {self.replay_target!r}")
        if any(v is not None and v < 1 for v in (self.micro_batch_size, self.micro_batch_tokens)):
            raise ConfigError("edit.micro_batch_size and edit.micro_batch_tokens must be >= 1, got "
                              f"{self.micro_batch_size} and {self.micro_batch_tokens}")
        if self.augment_prefixes < 0:
            raise ConfigError(f"edit.augment_prefixes must be >= 0, got {self.augment_prefixes}")
        if not 0 <= self.replay_raw_share <= 1:
            raise ConfigError(f"edit.replay_raw_share must be in [0, 1], got {self.replay_raw_share}")
        if self.replay_qa_share is not None and not 0 <= self.replay_qa_share <= 1:
            raise ConfigError(f"edit.replay_qa_share must be in [0, 1], got {self.replay_qa_share}")
        if self.replay_qa_share and self.replay_target != "distribution":
            raise ConfigError("edit.replay_qa_share needs replay_target = 'distribution': with 'tokens' the "
                              "model would learn the reference answers instead of keeping its own")
        if self.replay_top_k < 1:
            raise ConfigError("edit.replay_top_k must be >= 1")
        if self.replay_pool not in ("questions", "mixed"):
            raise ConfigError(f"edit.replay_pool must be 'questions' or 'mixed', got {self.replay_pool!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"edit.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds a candidate version must pass before promotion (absolute and vs promoted)."""

    promotion: Literal["auto", "manual"] = "auto"
    min_reliability: float = 0.95
    min_generalization: float | None = None  # reported always; gated only when set
    min_locality: float = 0.80  # token-level agreement with the base model on probe prompts
    max_retention_drop: float = 0.02  # facts the promoted version knew, still active
    max_capability_drop: float = 0.02  # lm-eval score drop vs the base model (absolute)
    capability_tasks: tuple[str, ...] = ("arc_easy", "piqa")
    # first N items per task; None = whole split. 2000 covers ARC-Easy (570) and PIQA (1,838)
    # whole: 200 items cannot resolve a 2-point drop (docs/experiments/quality/capability_gate_rules.md)
    capability_limit: int | None = 2000
    # paired: a drop over max_capability_drop fails only when it is also significant (one-sided
    # exact sign test on the items that changed answer, p < capability_alpha); point: any drop
    # over the threshold fails. Tasks without per-item scores (wiki_bpb, lm_eval:*) use point.
    capability_test: Literal["paired", "point"] = "paired"
    capability_alpha: float = 0.05
    reliability_sample: int = 2000  # above this many active facts, a seeded sample is measured
    probe_set_size: int = 100  # fixed probe prompts recorded from the base model

    def __post_init__(self) -> None:
        for name in ("min_reliability", "min_locality", "max_retention_drop", "max_capability_drop"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"gates.{name} must be within [0, 1], got {value}")
        if self.min_generalization is not None and not 0 <= self.min_generalization <= 1:
            raise ConfigError("gates.min_generalization must be within [0, 1]")
        if self.capability_limit is not None and self.capability_limit < 1:
            raise ConfigError("gates.capability_limit must be >= 1")
        if not 0 < self.capability_alpha < 1:
            raise ConfigError(f"gates.capability_alpha must be within (0, 1), got {self.capability_alpha}")


@dataclass(frozen=True)
class ScheduleConfig:
    """When rounds run: a cron expression, a pending-facts trigger, explicit requests."""

    # nightly at 02:00 local time; "off" (TOML has no null) or None disables the cron trigger
    cron: str | None = "0 2 * * *"
    min_pending_facts: int | None = None  # a round as soon as this many facts wait; None = off
    poll_seconds: float = 5.0  # how often requests and pending facts are checked
    misfire_grace_seconds: int = 6 * 3600  # a run missed while down still happens within this
    round_timeout_seconds: int = 6 * 3600

    def __post_init__(self) -> None:
        if self.cron is not None and self.cron.strip().lower() in ("off", "none", ""):
            object.__setattr__(self, "cron", None)  # frozen: normalize once, at the edge
        if self.min_pending_facts is not None and self.min_pending_facts < 1:
            raise ConfigError("schedule.min_pending_facts must be >= 1 (or absent to turn it off)")
        if self.poll_seconds <= 0:
            raise ConfigError("schedule.poll_seconds must be > 0")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ConfigError(f"schedule.cron must have 5 fields (min hour day month weekday), got {self.cron!r}")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    api_token: str | None = None  # required when host is not loopback
    max_prompt_chars: int = 8000
    max_tokens_limit: int = 512
    max_batch_size: int = 8
    # torch threads for generation; None: half the CPU cores, since rounds train in another
    # process beside the server (on 2 shared cores, 2 threads made a 16-token answer 4x slower)
    threads: int | None = None
    # "gated": a version's tuned tensors answer only the prompts in its scope (engine.scope); every
    # other prompt gets the base model exactly. "always": every prompt (the paper's behaviour).
    # Everything that answers as a version follows it: ask, the API, the gates, capability, bench
    scope: str = "gated"

    def __post_init__(self) -> None:
        if self.scope not in ("gated", "always"):
            raise ConfigError(f"serve.scope must be 'gated' or 'always', got {self.scope!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve.threads must be >= 1, got {self.threads}")
        if self.max_batch_size < 1:
            raise ConfigError(f"serve.max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port must be 1..65535, got {self.port}")
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.api_token:
            raise ConfigError(f"serve.host {self.host!r} is not loopback: set serve.api_token too")


@dataclass(frozen=True)
class StoreConfig:
    database_url: str | None = None  # None: sqlite:///$LOCFT_HOME/locft.db
    keep_promoted: int = 5  # promoted snapshots kept for rollback
    keep_rejected: int = 3

    def __post_init__(self) -> None:
        if self.keep_promoted < 1:
            raise ConfigError("store.keep_promoted must be >= 1")
        if self.keep_rejected < 0:
            raise ConfigError("store.keep_rejected must be >= 0")


@dataclass(frozen=True)
class LocftConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    gates: GatePolicy = field(default_factory=GatePolicy)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


T = TypeVar("T")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[]") for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"[{where}] must be a table")
        return from_dict(hint, value, where)
    raise ConfigError(f"{where}: unsupported type {hint}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a config dataclass from plain data; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as JSON-ready data (tuples become lists)."""
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
    """A copy of a config dataclass with some keys replaced, validated like locft.toml is."""
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


CONFIG_TEMPLATE = """\
# locft configuration. Every key is optional; the values shown commented are the defaults.
# Unknown keys are errors, so a typo never silently falls back to a default.

[model]
# path = "/models/my-hf-model-dir"   # a local Hugging Face directory, or a .gguf file
#                                    # or a model id in the local Hugging Face cache (offline)
# gguf_file = "model.Q4_1.gguf"      # a .gguf inside `path`, when `path` is a directory
# dtype = "auto"                     # auto: float32 on CPU, bfloat16 on CUDA
# device = "auto"                    # auto | cpu | cuda | cuda:N (auto spreads a model too large for one GPU)

[edit]
# location = "model.layers.{L}.mlp.down_proj.weight"   # default: chosen per architecture
# layers = [21, 22]          # default: per architecture (the embedded model: 21 and 22;
#                            # 20, 21 and 22 in rounds over 1,000 facts or more)
# prompt_format = "auto"     # auto (chat template when the model has one) | chat | raw
# lr = 5e-3                  # default: measured per model (paper: 5e-4 for 7B models)
# batch_size = 32           # default: measured per model (paper: 100)
# max_epochs = 25
# skip_loss = 0.01
# stop_loss = 0.01
# seed = 0
# replay_ratio = 1.5         # generic prompts per fact in a batch, base answers as targets;
#                            # default: measured per model (1.5 embedded, 0 = the paper's recipe)
# replay_weight = 1.0        # weight of the replay loss; default 1 (the embedded model: 2 with
#                            # its three layers over 1,000 facts or more)
# delta_decay = 0.0          # pull towards the base weights each step (change *= 1 - lr * delta_decay)
# null_space_energy = 0.0    # keep the change off the replay prompts' top input directions (share of energy)
# replay_target = "distribution"  # KL to the base's next-token distribution | tokens (its greedy tokens)
# micro_batch_size = 32      # rows per forward/backward (gradients accumulate): bounds memory;
#                            # default 32 on CPU, sized from free memory on CUDA
# micro_batch_tokens = 1024  # and padded tokens per forward/backward (a row longer than this runs alone);
#                            # default 1024 on CPU, sized from free memory on CUDA
# replay_pool = "mixed"      # mixed (questions, search queries, sentence openings, instructions) | questions
# replay_pool_size = 1000    # distinct replay prompts; default: one per fact (400..2000), plus the QA pairs on top
# replay_raw_share = 0.0     # share of replay prompts asked as plain text (no chat template), as lm-eval asks
# replay_qa_share = 0.3333   # share of the pool that is plain-text question-answer pairs (KL to the base),
#                            # as lm-eval scores choices; default: measured per model (1/3 embedded, else 0)
# compute_dtype = "auto"     # training matmuls: auto (bf16 where native) | float32 (the paper) | bfloat16
# scope_match = "subject"    # which prompts a version answers with its edits (serve.scope = "gated"):
#                            # subject (names a fact's subject) | similarity | either
# scope_false_positive_rate = 0.01  # similarity: share of generic prompts its threshold lets in
# scope_layer = 8            # similarity: the layer whose output is compared (default ~27% of the depth)

[gates]
# promotion = "auto"         # auto: promote when every gate passes | manual: wait for `locft promote`
# min_reliability = 0.95
# min_generalization = 0.5   # off unless set
# min_locality = 0.80
# max_retention_drop = 0.02
# max_capability_drop = 0.02
# capability_tasks = ["arc_easy", "piqa"]
# capability_limit = 2000    # first N items per task: ARC-Easy and PIQA whole (200: 5x quicker, far noisier)
# capability_test = "paired" # paired: a drop over the max fails only if also significant (p < alpha) | point
# capability_alpha = 0.05

[schedule]
# cron = "0 2 * * *"         # nightly at 02:00 local time; "off": no scheduled rounds
# min_pending_facts = 50     # also run as soon as this many facts wait (off unless set)
# poll_seconds = 5

[serve]
# host = "127.0.0.1"
# port = 8765
# api_token = "..."          # required when host is not loopback
# max_prompt_chars = 8000
# max_tokens_limit = 512
# max_batch_size = 8         # concurrent requests answered by one generate call
# threads = 1                # torch threads for generation (default: half the CPU cores)
# scope = "gated"            # edits answer only prompts about their facts; "always": every prompt

[store]
# database_url = "sqlite:///..."   # default: locft.db in this directory
# keep_promoted = 5
# keep_rejected = 3
"""
