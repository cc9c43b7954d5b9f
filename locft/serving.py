"""Serving: a version = base model + its snapshot's tensors -> answers (`locft ask`, the HTTP API).

`ModelServer` holds ONE base model and any number of loaded versions (each a private copy of its
tuned tensors, already on the model's device and dtype). A single worker thread owns the model:
it collects concurrent requests for a few milliseconds (up to `max_batch_size`, same version and
sampling settings) into one `generate` call, and before each batch points the target parameters
at that batch's version with O(1) `param.data` swaps (`engine.weights.swap_in`). So:

- hot swap = `activate(version_id)`: load + verify the new snapshot (sha256, base fingerprint,
  shapes) on the caller's thread, then move the "active" reference under a lock. Requests
  submitted before keep the version they were submitted with (a batch never mixes versions), so
  in-flight requests finish on the version they started with and none fails during a swap;
- the base storage is never written: swapping back to version 0 restores the exact base tensors.

Generation honours per-request `max_tokens`, `stop` strings, eos, optional sampling, streaming
deltas and logprobs (also of the prompt itself: `echo`, what lm-eval's loglikelihood needs).
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from locft.errors import LocftError, NotFoundError, SnapshotError

if TYPE_CHECKING:
    import torch

    from locft.engine.model_io import LoadedModel
    from locft.engine.scope import Scope
    from locft.store import Store, VersionInfo

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled"]
MODEL_PREFIX = "locft"  # API model names: "locft" (the active version) and "locft-v<N>"
DEFAULT_BATCH_WINDOW_S = 0.005  # how long a lone request waits for company
# how long to wait for the clients of the previous batch to come back: under steady load the
# clients of a batch return together, and without this wait they split into out-of-phase
# half batches for good (measured: mean batch 4.0 with 8 clients, max_batch_size 8)
DEFAULT_STRAGGLER_WINDOW_S = 0.05
DEFAULT_CACHED_VERSIONS = 4  # loaded versions kept besides the active one and the base


class ServingError(LocftError):
    """A request the server cannot run as asked (bad model name, too long for the context...)."""


def model_name(version_id: int) -> str:
    return f"{MODEL_PREFIX}-v{version_id}"


def parse_model_name(name: str) -> int | None:
    """'locft' -> None (the active version); 'locft-v3' -> 3; anything else: ServingError."""
    if name == MODEL_PREFIX:
        return None
    prefix = MODEL_PREFIX + "-v"
    digits = name[len(prefix):]
    # isascii: str.isdigit() is also true for '²' or '١', which int() refuses or reads as another number
    if name.startswith(prefix) and digits.isascii() and digits.isdigit() and len(digits) < 10:
        return int(name[len(prefix):])
    raise ServingError(f"unknown model {name!r}: use {MODEL_PREFIX!r} (the promoted version) or "
                       f"'{MODEL_PREFIX}-v<N>' (version N; `locft versions list` shows them)")


@dataclass(frozen=True)
class ServedVersion:
    """A version ready to serve: its tuned tensors (a private copy on the model's device/dtype)."""

    id: int
    tensors: Mapping[str, "torch.Tensor"]
    prompt_format: str  # 'chat' or 'raw': what its facts were trained with (and asked with)
    snapshot_sha256: str | None
    base_fingerprint: str
    loaded_at: float = field(default_factory=time.time)
    # which prompts its tensors answer (engine.scope); None: every prompt (serve.scope = "always",
    # or a snapshot built without a scope)
    scope: "Scope | None" = None

    @property
    def name(self) -> str:
        return model_name(self.id)

    @property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: which weights answered (version + snapshot or base hash)."""
        digest = self.snapshot_sha256 or self.base_fingerprint
        return f"{self.name}-{digest[:12]}"


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: tuple[tuple[int, str, float], ...] = ()  # (id, text, logprob), best first


@dataclass
class GenerationRequest:
    """One prompt to complete. `version_id` None: the active version at submission."""

    prompt_ids: list[int]
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob + top k
    echo_logprobs: bool = False  # also the logprobs of the prompt tokens
    on_delta: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    version_id: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sampling_key(self) -> tuple[Any, ...]:
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    version: ServedVersion
    logprobs: list[TokenLogprob] | None = None  # one per generated token (when asked)
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token (echo_logprobs)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Answer:
    """What `ask` returns: the version that answered and how the prompt was shown to it."""

    version_id: int
    prompt_format: str
    text: str
    finish_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version_id, "model": model_name(self.version_id),
                "prompt_format": self.prompt_format, "text": self.text, "finish_reason": self.finish_reason}


def encode_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Chat messages -> prompt ids, exactly as `engine.data.encode_prompt(..., 'chat')` encodes a
    single user turn (so a chat client sees the edits trained with the chat format)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ServingError("this model has no chat template: use /v1/completions (raw text) instead")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False).input_ids)


# ---------------------------------------------------------------------------------------------
# generation (the worker thread only)


@dataclass
class _Row:
    req: GenerationRequest
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed
    done: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters must not be streamed yet: an incomplete UTF-8 sequence, or
    the start of a stop string that the next tokens may complete."""
    keep = 0
    if text.endswith("\ufffd"):
        keep = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


class _Tracker:
    """Both a LogitsProcessor (remembers this step's log-probabilities when logprobs are asked)
    and a StoppingCriteria (per row: eos, stop strings, max_tokens, cancel; streams deltas)."""

    def __init__(self, rows: list[_Row], width: int, tokenizer: Any, eos_ids: set[int], top_k: int):
        self.rows, self.width, self.tok, self.eos_ids, self.top_k = rows, width, tokenizer, eos_ids, top_k
        self.want_logprobs = any(r.req.logprobs is not None for r in rows)
        self.step_logprobs: Any = None

    # LogitsProcessor
    def process(self, input_ids: Any, scores: Any) -> Any:
        if self.want_logprobs:
            import torch

            self.step_logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _token_text(self, token_id: int) -> str:
        return str(self.tok.decode([token_id], skip_special_tokens=False))

    # StoppingCriteria
    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        flags = []
        for j, row in enumerate(self.rows):
            if row.done is None:
                self._advance(j, row, int(last[j]))
            flags.append(row.done is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    def _advance(self, j: int, row: _Row, token: int) -> None:
        req = row.req
        if req.cancelled.is_set():
            row.done = "cancelled"
            return
        # eos counts as a generated token (in ids and logprobs, as OpenAI and vLLM report it: an
        # echo+logprobs request with max_tokens=1 always gets one token after the prompt, which
        # lm-eval relies on), but it is not text
        row.ids.append(token)
        if req.logprobs is not None and self.step_logprobs is not None:
            lp = self.step_logprobs[j]
            top: tuple[tuple[int, str, float], ...] = ()
            if req.logprobs > 0:
                values, indices = lp.topk(req.logprobs)
                top = tuple((int(i), self._token_text(int(i)), float(v))
                            for v, i in zip(values.tolist(), indices.tolist()))
            row.logprobs.append(TokenLogprob(token, self._token_text(token), float(lp[token]), top))
        if token in self.eos_ids:
            row.done = "stop"
        else:
            text = str(self.tok.decode(row.ids, skip_special_tokens=True))
            cut = min((i for i in (text.find(s) for s in req.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, row.done = text[:cut], "stop"
            elif len(row.ids) >= req.max_tokens:
                row.done = "length"
            row.text = text
        if req.on_delta is not None:
            end = len(row.text) if row.done else len(row.text) - _holdback(row.text, req.stop)
            if end > row.emitted:
                piece, row.emitted = row.text[row.emitted:end], end
                try:
                    req.on_delta(piece)
                except Exception:  # noqa: BLE001 - a consumer's failure must not stop the batch
                    log.exception("streaming callback failed; cancelling that request")
                    req.cancelled.set()


def _prompt_logprobs(loaded: LoadedModel, ids: list[int], top_k: int) -> list[TokenLogprob]:
    """Per prompt token: log P(token | tokens before it) under the current weights (one forward)."""
    import torch

    tok = loaded.tokenizer
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0].float()
    lps = torch.log_softmax(logits[:-1], dim=-1)
    out = [TokenLogprob(ids[0], str(tok.decode([ids[0]])), None)]
    chosen = lps.gather(1, torch.tensor(ids[1:], device=lps.device)[:, None])[:, 0].tolist()
    if top_k > 0:
        values, indices = lps.topk(top_k, dim=-1)
        values_l, indices_l = values.tolist(), indices.tolist()
    for pos, token in enumerate(ids[1:]):
        top: tuple[tuple[int, str, float], ...] = ()
        if top_k > 0:
            top = tuple((i, str(tok.decode([i])), v) for v, i in zip(values_l[pos], indices_l[pos]))
        out.append(TokenLogprob(token, str(tok.decode([token])), float(chosen[pos]), top))
    return out


def generate_batch(loaded: LoadedModel, requests: Sequence[GenerationRequest], version: ServedVersion) -> list[GenerationResult]:
    """Complete `requests` in one left-padded `generate` call with the weights as they are now.

    All requests must share sampling settings (the worker batches them that way)."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    tok = loaded.tokenizer
    model = loaded.model
    gen_cfg = getattr(model, "generation_config", None)
    eos_ids = {int(tok.eos_token_id)}
    cfg_eos = getattr(gen_cfg, "eos_token_id", None)
    eos_ids.update([cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or ()))
    prompt_lp: list[list[TokenLogprob] | None] = []
    for r in requests:
        if r.echo_logprobs and len(r.prompt_ids) > 0:
            prompt_lp.append(_prompt_logprobs(loaded, r.prompt_ids, r.logprobs or 0))
        else:
            prompt_lp.append(None)
    rows = [_Row(r) for r in requests]
    live = [row for row in rows if row.req.max_tokens > 0 and not row.req.cancelled.is_set()]
    for row in rows:
        if row.req.cancelled.is_set():
            row.done = "cancelled"
        elif row.req.max_tokens <= 0:
            row.done = "length"
    if live:
        width = max(len(row.req.prompt_ids) for row in live)
        ids = torch.full((len(live), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for j, row in enumerate(live):
            seq = row.req.prompt_ids
            ids[j, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[j, width - len(seq):] = 1
        first = live[0].req
        tracker = _Tracker(live, width, tok, eos_ids, max(r.req.logprobs or 0 for r in live))
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p, "top_k": None}
            if first.seed is not None:
                torch.manual_seed(first.seed)

        class _Processor:  # transformers calls processors as f(input_ids, scores)
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                return tracker.process(input_ids, scores)

        with torch.inference_mode():
            model.generate(
                input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                max_new_tokens=max(row.req.max_tokens for row in live), num_beams=1,
                pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos_ids),
                stopping_criteria=StoppingCriteriaList([tracker]),
                logits_processor=LogitsProcessorList([_Processor()]) if tracker.want_logprobs else None,
                **sampling,
            )
        for row in live:
            if row.done is None:  # generate ended first (e.g. its own max length): by length
                row.done = "length"
    return [
        GenerationResult(
            text=row.text, token_ids=row.ids, finish_reason=row.done or "length",
            prompt_tokens=len(row.req.prompt_ids), version=version,
            logprobs=row.logprobs if row.req.logprobs is not None else None, prompt_logprobs=plp,
        )
        for row, plp in zip(rows, prompt_lp)
    ]


# ---------------------------------------------------------------------------------------------
# the server


@dataclass
class _Job:
    request: GenerationRequest
    version: ServedVersion
    future: "Future[GenerationResult]"

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.version.id, *self.request.sampling_key())


_STOP = object()


class ModelServer:
    """One base model, its loaded versions, and the batching worker thread.

    Use as a context manager (or `start()` / `close()`). `store` is needed to load versions by
    id (`activate`, `version`, `locft-v<N>` model names); without one only the base is served.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        store: Store | None = None,
        prompt_format: str = "auto",
        max_batch_size: int = 8,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_S,
        straggler_window_s: float = DEFAULT_STRAGGLER_WINDOW_S,
        cached_versions: int = DEFAULT_CACHED_VERSIONS,
        max_queue: int = 256,
        scope: str = "gated",
    ) -> None:
        from locft.engine.data import resolve_prompt_format

        self.loaded = loaded
        self.store = store
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window_s = batch_window_s
        self.straggler_window_s = max(straggler_window_s, batch_window_s)
        self._expect = 1  # requests the next batch can expect: the last batch + what queued meanwhile
        self.cached_versions = cached_versions
        self.max_queue = max_queue
        self.scope_mode = scope  # "gated": versions answer in scope only; "always": every prompt
        self.default_prompt_format = resolve_prompt_format(prompt_format, loaded.tokenizer)
        self.base = ServedVersion(0, {}, self.default_prompt_format, None, loaded.fingerprint)
        self._lock = threading.Lock()  # guards _active and _cache
        self._active = self.base
        self._cache: OrderedDict[int, ServedVersion] = OrderedDict()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        # worker-thread state: which version the parameters point at, the base tensors swapped out
        self._applied_id = 0
        self._base_tensors: dict[str, torch.Tensor] = {}
        self._params = dict(loaded.model.named_parameters())
        self.batches_run = 0
        self.requests_run = 0
        self.max_batch_seen = 0
        self.tokens_generated = 0
        self.busy_s = 0.0  # wall time spent in generate calls
        self.context_length = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0) or None
        self.vocab_size = len(loaded.tokenizer)
        self.swaps: list[tuple[float, int, int]] = []  # (time, from, to) of activations

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "ModelServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="locft-generate", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, stop the worker, and point the model back at the base weights."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._point_at(self.base)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- versions -----------------------------------------------------------------------------

    @property
    def active(self) -> ServedVersion:
        with self._lock:
            return self._active

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted({0, self._active.id, *self._cache})

    def version(self, version_id: int | None) -> ServedVersion:
        """A loaded version (None: the active one), loading and verifying it when needed."""
        if version_id is None:
            return self.active
        if version_id == 0:
            return self.base
        with self._lock:
            if self._active.id == version_id:
                return self._active
            if version_id in self._cache:
                self._cache.move_to_end(version_id)
                return self._cache[version_id]
        served = self._load(version_id)  # outside the lock: reading a snapshot takes a while
        with self._lock:
            self._cache[version_id] = served
            self._cache.move_to_end(version_id)
            while len(self._cache) > self.cached_versions:
                self._cache.popitem(last=False)  # jobs still holding it keep their reference
        return served

    def _load(self, version_id: int) -> ServedVersion:
        from locft.engine.snapshot import check_base, load_snapshot
        from locft.engine.weights import parameters_by_name

        if self.store is None:
            raise NotFoundError(f"version {version_id}: this server has no store to load versions from")
        info = self.store.get_version(version_id)  # NotFoundError for an unknown id
        if info.snapshot_path is None:
            return self.base
        if not info.snapshot_present:
            raise SnapshotError(f"the snapshot of version {version_id} ({info.snapshot_path}) is gone "
                                "(deleted by retention or by hand); it cannot be served")
        snap = load_snapshot(self.store.home.absolute(info.snapshot_path), info.snapshot_sha256)
        check_base(snap, self.loaded)  # refuses a snapshot built on another base model
        params = parameters_by_name(self.loaded.model, list(snap.tensors))
        tensors = {}
        for name, t in snap.tensors.items():
            p = params[name]
            if tuple(t.shape) != tuple(p.shape):
                raise SnapshotError(f"version {version_id}: {name} has shape {tuple(t.shape)}, the model's is "
                                    f"{tuple(p.shape)}")
            # a private copy on the model's device and dtype, so the swap itself is O(1)
            tensors[name] = t.to(device=p.device, dtype=p.dtype).contiguous()
        edit_cfg = info.edit_config or snap.manifest.get("edit_config") or {}
        fmt = edit_cfg.get("prompt_format") if isinstance(edit_cfg, dict) else None
        prompt_format = fmt if fmt in ("chat", "raw") else self.default_prompt_format
        scope = snap.scope if self.scope_mode == "gated" else None
        log.info("loaded version %d (%d tensor(s), prompt format %s, %s)", version_id, len(tensors), prompt_format,
                 f"scope: {scope.match}, {len(scope.keys)} fact(s)" if scope is not None else "every prompt")
        return ServedVersion(version_id, tensors, prompt_format, info.snapshot_sha256, self.loaded.fingerprint,
                             scope=scope)

    def activate(self, version_id: int) -> ServedVersion:
        """Serve `version_id` to new requests from now on (hot swap). Loads and verifies first;
        on any error the previous version stays active and the error is raised."""
        served = self.version(version_id)
        with self._lock:
            previous = self._active
            self._active = served
            self._cache.pop(served.id, None)
            if previous.id not in (0, served.id):
                self._cache[previous.id] = previous  # cheap to roll back to
                while len(self._cache) > self.cached_versions:
                    self._cache.popitem(last=False)
            self.swaps.append((time.time(), previous.id, served.id))
        if previous.id != served.id:
            log.info("serving version %d (was %d)", served.id, previous.id)
        return served

    # ---- requests -----------------------------------------------------------------------------

    def queue_length(self) -> int:
        return self._queue.qsize()

    def submit(self, request: GenerationRequest) -> "Future[GenerationResult]":
        """Queue a request on the version it names (or the active one, fixed now)."""
        if self._thread is None:
            raise ServingError("the model server is not running")
        self.check_request(request)
        version = self.version(request.version_id)
        future: Future[GenerationResult] = Future()
        self._queue.put(_Job(request, version, future))
        return future

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit(request).result(timeout)

    def check_request(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise ServingError("the prompt is empty")
        bad = [t for t in request.prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ServingError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.context_length is not None and len(request.prompt_ids) + request.max_tokens > self.context_length:
            raise ServingError(
                f"this model's context is {self.context_length} tokens; the prompt has {len(request.prompt_ids)} "
                f"and max_tokens asks for {request.max_tokens} more"
            )

    def ask(
        self, prompt: str, *, version_id: int | None = None, chat: bool | None = None, max_tokens: int = 32,
    ) -> Answer:
        """Answer `prompt` the way its version's facts were trained: the version's prompt format
        (chat template or raw), unless `chat` says otherwise."""
        from locft.engine.data import encode_prompt

        version = self.version(version_id)
        fmt = version.prompt_format if chat is None else ("chat" if chat else "raw")
        if fmt == "chat" and not getattr(self.loaded.tokenizer, "chat_template", None):
            raise ServingError("this model has no chat template; ask without --chat")
        ids = encode_prompt(self.loaded.tokenizer, prompt, fmt)
        result = self.generate(GenerationRequest(ids, max_tokens=max_tokens, version_id=version.id))
        return Answer(version.id, fmt, result.text.strip(), result.finish_reason)

    # ---- the worker ---------------------------------------------------------------------------

    def _point_at(self, version: ServedVersion) -> None:
        """Make the model's parameters the version's tensors (and every other tuned one the base)."""
        from locft.engine.weights import swap_in

        if version.id == self._applied_id:
            return
        for name in version.tensors:
            if name not in self._base_tensors:  # never swapped before: it points at the base now
                self._base_tensors[name] = self._params[name].data
        target = dict(self._base_tensors)
        target.update(version.tensors)
        swap_in(self.loaded.model, target)
        self._applied_id = version.id

    def _generate(self, batch: list[_Job], version: ServedVersion) -> list[GenerationResult]:
        """One batch on one version: a scoped version keeps the base weights in place and applies
        its tensors to the in-scope rows only (engine.scoped), the same code path as the gates'."""
        from locft.engine.scoped import answering

        if version.scope is None:
            self._point_at(version)
            return generate_batch(self.loaded, [j.request for j in batch], version)
        self._point_at(self.base)
        with answering(self.loaded, version.tensors, version.scope):
            return generate_batch(self.loaded, [j.request for j in batch], version)

    def _collect(self, first: _Job, pending: deque[_Job]) -> list[_Job]:
        batch = [first]
        for job in list(pending):
            if len(batch) >= self.max_batch_size:
                break
            if job.key == first.key:
                batch.append(job)
                pending.remove(job)
        start = time.monotonic()
        while len(batch) < self.max_batch_size:
            # wait longer only while fewer requests are here than recent load says will come
            window = self.straggler_window_s if len(batch) < self._expect else self.batch_window_s
            remaining = start + window - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)  # seen again after this batch
                break
            if job.key == first.key:
                batch.append(job)
            else:
                pending.append(job)
        return batch

    def _loop(self) -> None:
        pending: deque[_Job] = deque()
        while True:
            first = pending.popleft() if pending else self._queue.get()
            if first is _STOP:
                if pending:  # finish what was already accepted
                    self._queue.put(_STOP)
                    continue
                return
            batch = [j for j in self._collect(first, pending) if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            version = batch[0].version
            started = time.perf_counter()
            try:
                results = self._generate(batch, version)
            except BaseException as exc:  # noqa: BLE001 - every waiting request must hear about it
                log.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self._expect = min(self.max_batch_size, len(batch) + self._queue.qsize() + len(pending))
            self.busy_s += time.perf_counter() - started
            self.batches_run += 1
            self.requests_run += len(batch)
            self.tokens_generated += sum(r.completion_tokens for r in results)
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            for job, result in zip(batch, results):
                job.future.set_result(result)


def load_server(
    home: Path | None = None,
    *,
    store: Store | None = None,
    config: Any = None,
    loaded: LoadedModel | None = None,
    version_id: int | None = None,
) -> ModelServer:
    """A started ModelServer for a home: its configured base model, serving the promoted version
    (or `version_id`). The caller closes it (and the store it passed)."""
    from locft.config import load_config
    from locft.engine.model_io import load_base
    from locft.home import Home

    h = Home.resolve(home) if store is None else store.home
    config = config or load_config(h.root)
    set_threads(config.serve.threads)
    if loaded is None:
        loaded = load_base(config.model, h.root)
    server = ModelServer(loaded, store=store, prompt_format=config.edit.prompt_format,
                         max_batch_size=config.serve.max_batch_size, scope=config.serve.scope).start()
    try:
        target = version_id if version_id is not None else (store.promoted_version().id if store else 0)
        if target:
            server.activate(target)
    except BaseException:
        server.close()
        raise
    return server


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads for this process: `threads`, or half the CPU cores (min 1).

    Why not all cores: rounds train in another process beside the server, and on an
    oversubscribed machine OpenMP threads that wait for each other collapse (measured on 2
    shared cores: a 16-token answer took 1.0 s with 1 thread, 4-10 s with 2)."""
    import os

    import torch

    n = threads or max(1, (os.cpu_count() or 2) // 2)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("generation uses %d torch thread(s)", n)
    return n


_ids = itertools.count(1)


def request_id(prefix: str) -> str:
    """Unique ids for responses (`cmpl-...`, `chatcmpl-...`)."""
    return f"{prefix}-{int(time.time() * 1000):x}{next(_ids):06x}"


def finite(x: float | None) -> float | None:
    """JSON has no -inf: a logprob of -inf is reported as a very negative number."""
    if x is None or math.isfinite(x):
        return x
    return -9999.0
