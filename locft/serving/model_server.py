"""`ModelServer`: one base model, its loaded versions, hot swap, and the batching worker thread.

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

The batch itself (stop strings, streaming, logprobs) is `locft.serving.generation`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from locft.errors import NotFoundError, SnapshotError
from locft.serving.generation import GenerationRequest, GenerationResult, generate_batch
from locft.serving.served_version import Answer, ServedVersion, ServingError

if TYPE_CHECKING:
    import torch

    from locft.engine.model_io import LoadedModel
    from locft.store import Store

log = logging.getLogger(__name__)

DEFAULT_BATCH_WINDOW_S = 0.005  # how long a lone request waits for company
# how long to wait for the clients of the previous batch to come back: under steady load the
# clients of a batch return together, and without this wait they split into out-of-phase
# half batches for good (measured: mean batch 4.0 with 8 clients, max_batch_size 8)
DEFAULT_STRAGGLER_WINDOW_S = 0.05
DEFAULT_CACHED_VERSIONS = 4  # loaded versions kept besides the active one and the base


@dataclass
class _Job:
    request: GenerationRequest
    version: ServedVersion
    future: Future[GenerationResult]

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

    def start(self) -> ModelServer:
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

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
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

    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
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
