"""The one training loop of LocFT-BF.

Breadth-first (the method): epochs of shuffled mini-batches over ALL facts; Adam on the
located tensor(s) only; loss on target tokens (per-sample mean, then batch mean); a batch
whose loss is already below `skip_loss` is skipped; training stops when an epoch's mean loss
is below `stop_loss`. Depth-first (each fact alone to convergence, one after another) exists
only as the benchmark's baseline.

Forward modes give the same loss (checked on the first batch, else we fall back):
- cached: the hidden states entering the lowest tuned layer are constant (everything below is
  frozen, the texts do not change), so they are computed once (into one buffer) and each step
  runs only the layers above; the loss is taken at target positions only, through the frozen
  output head a few rows at a time (engine.token_loss); when every sequence starts with the same
  tokens (a chat template's system prompt: about half of each short fact), that shared prefix
  runs once per step with batch 1 and the batch attends to its keys and values;
- full: every step runs from the embeddings, the loss as in cached mode;
- reference: the paper's loop: full forward, logits at every position.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from locft.config import EditConfig
from locft.engine.data import (
    Batch,
    Example,
    build_example,
    collate,
    encode_prompt,
    example_from_ids,
    per_sample_mean,
    resolve_prompt_format,
)
from locft.engine.augment import augmented_prompts
from locft.engine.device import module_device, training_pass_sizes
from locft.engine.memory import release_freed_memory
from locft.engine.model_io import LoadedModel
from locft.engine.null_space import input_second_moments, low_energy_projector, project_change
from locft.engine.replay import ReplayItem, replay_for
from locft.engine.token_loss import head_token_losses, is_frozen_linear, logits_token_losses
from locft.engine.targets import (
    EditLocation,
    default_batch_size,
    default_replay_qa_share,
    default_replay_ratio,
    default_replay_weight,
    default_lr,
    layer_index,
    location_from_config,
    resolve_location,
)
from locft.engine.weights import applied, parameters_by_name
from locft.errors import ConfigError, LocftError
from locft.facts import EditFact

log = logging.getLogger(__name__)

_CAPTURE_BATCH = 64
_MODE_CHECK_RTOL = 1e-3
# rows of the forward-mode check: the reference loop computes logits at every position (a few
# hundred MiB for a full batch of chat-formatted rows), and a few rows tell the paths apart
_MODE_CHECK_ROWS = 8
_MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a second forward call


class EditCancelled(LocftError):
    """Training was asked to stop (daemon shutdown); nothing was produced."""


@dataclass(frozen=True)
class TrainProgress:
    phase: str  # "cache" or "train"
    epoch: int  # 1-based; for depth-first, the fact number
    max_epochs: int
    step: int  # steps done in this epoch
    steps_per_epoch: int
    loss: float | None
    edits_per_second: float


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    mean_loss: float  # the edit loss (replay excluded): what skip/stop thresholds compare
    seconds: float
    steps: int
    skipped: int
    replay_loss: float | None = None


@dataclass
class EditResult:
    """The trained tensors (detached CPU copies) and how training went."""

    tensors: dict[str, torch.Tensor]
    location: EditLocation
    prompt_format: str
    lr: float
    forward_mode: str  # the mode actually used (after the first-batch check)
    epochs: list[EpochStats] = field(default_factory=list)
    converged: bool = False
    cache_seconds: float = 0.0
    # after the cache, before the first step: the forward-mode check, the base model's
    # distribution on the replay prompts, null-space projectors
    setup_seconds: float = 0.0
    train_seconds: float = 0.0
    steps: int = 0
    n_facts: int = 0
    n_replay: int = 0  # replay pool size
    n_augmented: int = 0  # prefixed copies of the facts (edit.augment_prefixes per fact)
    shared_prefix_tokens: int = 0  # leading tokens run once per step for the whole batch (cached mode)
    config: EditConfig | None = None  # with per-model defaults resolved: what was actually used
    examples_seen: int = 0  # fact forward passes: edits x epochs for breadth-first
    compute_dtype: str = "float32"  # what the training forward/backward ran in (autocast resolved)
    # per tuned tensor: input directions its change was kept out of (edit.null_space_energy)
    null_space_ranks: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"  # where training ran (the input device when the model is spread)

    @property
    def edits_x_epochs_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "location": self.location.describe(),
            "parameters": list(self.tensors),
            "prompt_format": self.prompt_format,
            "lr": self.lr,
            "batch_size": self.config.batch_size if self.config else None,
            # rows and padded tokens per forward/backward: chosen per device unless configured
            "device": self.device,
            "micro_batch_size": self.config.micro_batch_size if self.config else None,
            "micro_batch_tokens": self.config.micro_batch_tokens if self.config else None,
            "forward_mode": self.forward_mode,
            "compute_dtype": self.compute_dtype,
            "epochs": len(self.epochs),
            "converged": self.converged,
            "final_loss": self.epochs[-1].mean_loss if self.epochs else None,
            "loss_per_epoch": [round(e.mean_loss, 6) for e in self.epochs],
            "replay_loss_per_epoch": (
                [None if e.replay_loss is None else round(e.replay_loss, 6) for e in self.epochs]
                if self.n_replay else None
            ),
            "replay_pool": self.n_replay,
            "augmented_rows": self.n_augmented,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "steps": self.steps,
            "cache_seconds": round(self.cache_seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "seconds_per_epoch": round(self.train_seconds / len(self.epochs), 3) if self.epochs else None,
            "edits_x_epochs_per_second": round(self.edits_x_epochs_per_second, 3),
            "null_space_ranks": self.null_space_ranks or None,
        }


ProgressCallback = Callable[[TrainProgress], None]


class _Captured(Exception):
    """Raised from a pre-hook to stop a forward pass once the wanted activations are captured."""


@dataclass
class _LayerStack:
    decoder: torch.nn.Module  # e.g. LlamaModel
    attr: str  # its ModuleList attribute, e.g. "layers"
    start: int  # lowest tuned layer


def _layer_stack(model: torch.nn.Module, names: Sequence[str]) -> _LayerStack | None:
    """Where the tuned tensors sit in the decoder's layer list, if they all do."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is model:
        return None
    prefix = next((n for n, m in model.named_modules() if m is decoder), None)
    if not prefix:
        return None
    attrs = {name[len(prefix) + 1 :].split(".", 1)[0] for name in names if name.startswith(prefix + ".")}
    if len(attrs) != 1:
        return None
    attr = attrs.pop()
    if not isinstance(getattr(decoder, attr, None), torch.nn.ModuleList):
        return None
    layers = [layer_index(n, f"{prefix}.{attr}") for n in names]
    if any(layer is None for layer in layers):
        return None
    return _LayerStack(decoder, attr, min(layers))  # type: ignore[type-var]


class _NoSharedPrefix(Exception):
    """This architecture's layers cannot be renumbered for a partial KV cache."""


@contextmanager
def _layers_numbered_from_zero(layers: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Give the running slice of layers cache indices 0.. so that a fresh KV cache fits it."""
    saved = []
    try:
        for i, layer in enumerate(layers):
            attn = getattr(layer, "self_attn", None)
            if attn is None or not isinstance(getattr(attn, "layer_idx", None), int):
                raise _NoSharedPrefix
            saved.append((attn, attn.layer_idx))
            attn.layer_idx = i
        yield
    finally:
        for attn, index in saved:
            attn.layer_idx = index


def _common_prefix_len(examples: Sequence[Example]) -> int:
    """Tokens every example starts with, leaving each at least the prompt token whose logit
    predicts its first target token."""
    if not examples:
        return 0
    first = examples[0].input_ids
    limit = min(e.prompt_len for e in examples) - 1
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in examples):
        n += 1
    return n


def _shared_prefix(examples: Sequence[Example]) -> tuple[int, list[bool]]:
    """The prompt prefix run once per pass, and which examples start with it: those that begin
    like the first example (the facts' format; chat prompts share the template's system turn),
    when they are at least half of all. Other rows (replay asked as plain text) run whole."""
    if not examples:
        return 0, []
    head = examples[0].input_ids[:_MIN_SHARED_PREFIX]
    shares = [e.prompt_len > _MIN_SHARED_PREFIX and e.input_ids[:_MIN_SHARED_PREFIX] == head for e in examples]
    if 2 * sum(shares) < len(examples):
        return 0, [False] * len(examples)
    prefix = _common_prefix_len([e for e, s in zip(examples, shares) if s])
    if prefix < _MIN_SHARED_PREFIX:
        return 0, [False] * len(examples)
    return prefix, shares


def _packed_rows(lengths: Sequence[int], width: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Views [length, width] into one new buffer, one per length, in order."""
    buffer = torch.empty((sum(lengths), width), dtype=dtype, device=device)
    return list(buffer.split(list(lengths)))


def _per_row(shared: Any, rows: int) -> Any:
    """A fresh KV cache holding the shared prefix's keys and values once per row (expanded views:
    the batch's own tokens are appended to new tensors, `shared` stays as it is)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, layer in enumerate(shared.layers):
        cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i)
    return cache


@contextmanager
def _only_layers_from(stack: _LayerStack) -> Iterator[None]:
    """Run the decoder's own forward over layers[start:] only (same module objects)."""
    full = getattr(stack.decoder, stack.attr)
    setattr(stack.decoder, stack.attr, torch.nn.ModuleList(list(full)[stack.start :]))
    try:
        yield
    finally:
        setattr(stack.decoder, stack.attr, full)


class _Forward:
    """Computes the training loss of a batch of example indices in one of the three modes."""

    def __init__(self, loaded: LoadedModel, examples: Sequence[Example], names: Sequence[str], mode: str,
                 compute_dtype: torch.dtype | None = None):
        self.model = loaded.model
        self.device = loaded.device
        self.pad_id = loaded.tokenizer.pad_token_id
        self.examples = examples
        self.head = self.model.get_output_embeddings()
        # where the loss is taken: the head's device (all one device unless accelerate spread the model)
        self.loss_device = module_device(self.head) if self.head is not None else self.device
        self.stack = _layer_stack(self.model, names)
        self.mode = mode
        if mode == "cached" and self.stack is None:
            log.warning("cached forward is not possible for these parameters; using full forward")
            self.mode = "full"
        self.cache: list[torch.Tensor] = []  # per example, from position offsets[i] on
        self.prefix_len = 0
        self.offsets: list[int] = [0] * len(examples)  # prefix_len for rows that share the prefix, else 0
        self.prefix_hidden: torch.Tensor | None = None  # [1, prefix_len, hidden]
        # per example index: (top-k token ids, their renormalized probabilities, sum p log p), one
        # row per target position; examples listed here train towards a distribution (KL)
        self.soft: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # autocast dtype of the training forward/backward; None: the model's own dtype. The
        # activation cache and the forward-mode check always run in the model's dtype (exact).
        self.compute_dtype = compute_dtype
        self.projectors: list[torch.Tensor] = []  # per tuned tensor (engine.null_space); empty: off

    def build_cache(self, progress: ProgressCallback | None) -> None:
        """Hidden states entering layer `start`, per example, computed once without grad.

        All rows live in one buffer allocated up front (self.cache holds views into it), not
        in one heap block per row between the capture batches' freed activations. The shared
        prefix runs once here too: rows that start with it run only their own tokens, attending
        to the prefix's keys and values."""
        assert self.stack is not None
        # the shared prefix depends only on token ids: known before capture, so each example keeps
        # only its own part (never two copies of the whole cache at once)
        keep_from, shares = _shared_prefix(self.examples)
        offsets = [keep_from if s else 0 for s in shares]
        by_length = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].input_ids))
        groups = [[i for i in by_length if offsets[i]], [i for i in by_length if not offsets[i]]]
        self.cache, self.prefix_hidden = [], None
        with torch.no_grad(), self._capturing() as captured:
            prefix_kv = self._capture_prefix(captured, self.examples[groups[0][0]].input_ids[:keep_from]) \
                if keep_from else None
            done = 0
            for group, kv in ((groups[0], prefix_kv), (groups[1], None)):
                for b in range(0, len(group), _CAPTURE_BATCH):
                    idx = group[b : b + _CAPTURE_BATCH]
                    hidden, skipped, kv = self._capture_batch(captured, idx, offsets, kv)
                    if not self.cache:
                        self.cache = _packed_rows([len(e.input_ids) - o for e, o in zip(self.examples, offsets)],
                                                  hidden.shape[-1], hidden.dtype, self._cache_device())
                    for j, i in enumerate(idx):
                        own = len(self.examples[i].input_ids) - offsets[i]
                        self.cache[i].copy_(hidden[j, skipped[j] : skipped[j] + own])
                    done += len(idx)
                    if progress:
                        progress(TrainProgress("cache", 0, 0, done, len(by_length), None, 0.0))
        self.prefix_len, self.offsets = keep_from, offsets

    def _cache_device(self) -> torch.device:
        """The lowest tuned layer's device: its input lives there (differs from self.device only
        when accelerate spread the model over several GPUs)."""
        assert self.stack is not None
        return module_device(getattr(self.stack.decoder, self.stack.attr)[self.stack.start])

    def _capture_batch(self, captured: list[torch.Tensor], idx: Sequence[int], offsets: Sequence[int],
                       prefix_kv: Any) -> tuple[torch.Tensor, list[int], Any]:
        """One capture batch: the hidden states, how many leading positions of each row they leave
        out, and the prefix keys and values for the next batch (None once they have failed)."""
        if prefix_kv is not None:
            try:
                return self._capture_after_prefix(captured, idx, offsets[idx[0]], prefix_kv), [0] * len(idx), prefix_kv
            except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
                log.warning("shared-prefix capture failed (%s); capturing whole rows", exc)
        hidden = self._capture_whole(captured, idx)
        if offsets[idx[0]] and self.prefix_hidden is None:
            self.prefix_hidden = hidden[:1, : offsets[idx[0]]].clone()
        return hidden, [offsets[i] for i in idx], None

    @contextmanager
    def _capturing(self) -> Iterator[list[torch.Tensor]]:
        """A pre-hook on layer `start` that records its input and stops the forward pass there."""
        assert self.stack is not None
        layers = getattr(self.stack.decoder, self.stack.attr)
        captured: list[torch.Tensor] = []

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append((args[0] if args else kwargs["hidden_states"]).detach())
            raise _Captured

        handle = layers[self.stack.start].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield captured
        finally:
            handle.remove()

    def _run_to_start(self, captured: list[torch.Tensor], **inputs: Any) -> torch.Tensor:
        captured.clear()
        try:
            self.stack.decoder(**inputs)  # type: ignore[union-attr]
        except _Captured:
            pass
        return captured[0]

    def _capture_prefix(self, captured: list[torch.Tensor], prefix_ids: Sequence[int]) -> Any:
        """Run the shared prefix once; keep its hidden state and return its keys and values in
        the layers below `start` (None where this architecture does not take a KV cache)."""
        from transformers import DynamicCache

        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
        kv = DynamicCache()
        try:
            self.prefix_hidden = self._run_to_start(captured, input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    use_cache=True, **{self._cache_kw(): kv}).clone()
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # an architecture we cannot slice
            log.warning("shared-prefix capture failed (%s); capturing whole rows", exc)
            return None
        # below layer 0 there is nothing to attend to: rows then run whole
        return kv if self.stack.start and len(kv.layers) == self.stack.start else None  # type: ignore[union-attr]

    def _cache_kw(self) -> str:
        params = inspect.signature(self.stack.decoder.forward).parameters  # type: ignore[union-attr]
        return "cache" if "cache" in params else "past_key_values"

    def _capture_after_prefix(self, captured: list[torch.Tensor], idx: Sequence[int], prefix_len: int,
                              prefix_kv: Any) -> torch.Tensor:
        """Hidden states entering layer `start` at the own tokens of rows `idx` (which all start
        with the shared prefix), attending to the prefix's keys and values."""
        own = [torch.tensor(self.examples[i].input_ids[prefix_len:], dtype=torch.long) for i in idx]
        ids = torch.nn.utils.rnn.pad_sequence(own, batch_first=True, padding_value=self.pad_id).to(self.device)
        mask = torch.zeros(ids.shape, dtype=torch.long, device=self.device)
        for j, row in enumerate(own):
            mask[j, : len(row)] = 1
        positions = torch.arange(prefix_len, prefix_len + ids.shape[1], device=self.device).expand(len(idx), -1)
        mask = torch.cat([mask.new_ones((len(idx), prefix_len)), mask], 1)
        return self._run_to_start(captured, input_ids=ids, attention_mask=mask, position_ids=positions,
                                  use_cache=True, **{self._cache_kw(): _per_row(prefix_kv, len(idx))})

    def _capture_whole(self, captured: list[torch.Tensor], idx: Sequence[int]) -> torch.Tensor:
        batch = collate([self.examples[i] for i in idx], self.pad_id, self.device)
        return self._run_to_start(captured, input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    def row_tokens(self, index: int) -> int:
        """Positions example `index` runs through the trained layers in this mode."""
        n = len(self.examples[index].input_ids)
        return n - self.offsets[index] if self.mode == "cached" else n

    def _drop_shared_prefix(self) -> None:
        assert self.prefix_hidden is not None
        prefix = self.prefix_hidden[0]
        cache = _packed_rows([o + len(c) for o, c in zip(self.offsets, self.cache)], prefix.shape[-1],
                             prefix.dtype, prefix.device)
        for whole, own, offset in zip(cache, self.cache, self.offsets):
            whole[:offset].copy_(prefix[:offset])
            whole[offset:].copy_(own)
        self.cache, self.prefix_len, self.prefix_hidden = cache, 0, None
        self.offsets = [0] * len(self.examples)

    def _upper_layers(self, hidden_in: torch.Tensor, attention_mask: torch.Tensor, shares: torch.Tensor,
                      any_shares: bool) -> torch.Tensor:
        """Run the layers above the cache on `hidden_in` (each row's cached part); rows where
        `shares` is set continue the shared prefix, the others see it masked out (rotary
        positions are relative, so shifting a whole row by the prefix length changes nothing)."""
        assert self.stack is not None
        with _only_layers_from(self.stack):
            if not self.prefix_len or not any_shares:  # known on the host: no device sync
                out = self.stack.decoder(inputs_embeds=hidden_in, attention_mask=attention_mask)
                return out.last_hidden_state
            from transformers import DynamicCache

            layers = getattr(self.stack.decoder, self.stack.attr)
            p, b = self.prefix_len, hidden_in.shape[0]
            with _layers_numbered_from_zero(layers):
                shared = DynamicCache()
                ones = torch.ones((1, p), dtype=attention_mask.dtype, device=attention_mask.device)
                self.stack.decoder(inputs_embeds=self.prefix_hidden, attention_mask=ones, use_cache=True,
                                   **{self._cache_kw(): shared})
                prefix_mask = shares.to(attention_mask.dtype)[:, None].expand(b, p)
                positions = torch.arange(p, p + hidden_in.shape[1], device=hidden_in.device).expand(b, -1)
                out = self.stack.decoder(
                    inputs_embeds=hidden_in, attention_mask=torch.cat([prefix_mask, attention_mask], 1),
                    position_ids=positions, use_cache=True, **{self._cache_kw(): _per_row(shared, b)},
                )
            return out.last_hidden_state

    @contextmanager
    def _compute_precision(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.compute_dtype or torch.bfloat16,
                            enabled=self.compute_dtype is not None):
            yield

    def _at_targets(self, indices: Sequence[int], mode: str) -> tuple[torch.Tensor, bool, Batch]:
        """At the batch's target positions (flattened as batch.rows/cols): the final hidden states
        (is_logits False), or the logits where the head is not applied separately (the reference
        loop, a head that trains); and the batch."""
        batch = collate([self.examples[i] for i in indices], self.pad_id, self.device)
        if mode == "reference":
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            return logits[batch.rows, batch.cols], True, batch
        if mode == "cached":
            rows = [self.cache[i] for i in indices]
            hidden_in = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
            # lengths and offsets in one host-to-device copy; the mask is built on the device
            lengths_offsets = torch.tensor([[len(r) for r in rows], [self.offsets[i] for i in indices]],
                                           dtype=torch.long).to(hidden_in.device, non_blocking=True)
            own_mask = (torch.arange(hidden_in.shape[1], device=hidden_in.device)[None, :]
                        < lengths_offsets[0][:, None]).to(batch.attention_mask.dtype)
            offsets = lengths_offsets[1]
            hidden = self._upper_layers(hidden_in, own_mask, offsets > 0,
                                        any(self.offsets[i] for i in indices))
            at = batch.rows.to(hidden.device)
            selected = hidden[at, batch.cols.to(hidden.device) - offsets.to(hidden.device)[at]]
        else:
            decoder = self.stack.decoder if self.stack else self.model.get_decoder()
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            selected = hidden[batch.rows, batch.cols]
        if is_frozen_linear(self.head):
            return selected, False, batch
        return self.head(selected), True, batch

    def record_soft_targets(self, indices: Sequence[int], top_k: int, rows_per_pass: int) -> None:
        """Keep the current (base) model's top-k next-token distribution at each target position of
        `indices`; sample_losses then trains those examples towards it (KL) instead of their tokens.
        `rows_per_pass` bounds the full-vocabulary logits held at once, as in training."""
        by_length = sorted(indices, key=self.row_tokens)  # each pass pads only to its own longest row
        with torch.no_grad(), self._compute_precision():
            for b in range(0, len(by_length), rows_per_pass):
                idx = by_length[b : b + rows_per_pass]
                selected, is_logits, batch = self._at_targets(idx, self.mode)
                logits = selected if is_logits else self.head(selected)
                logp, top = logits.float().log_softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
                p = logp.softmax(-1)  # renormalized over the top k
                neg_entropy = (p * p.clamp_min(1e-30).log()).sum(-1)
                for j, i in enumerate(idx):
                    rows = batch.rows == j
                    self.soft[i] = (top[rows].clone(), p[rows].clone(), neg_entropy[rows].clone())

    def _target_distributions(self, indices: Sequence[int], batch: Batch) -> tuple[torch.Tensor, ...]:
        """Per target position: token ids, their weights and the constant of the loss
        (engine.token_loss): one-hot on the label, or the recorded distribution (soft targets)."""
        soft = [self.soft.get(i) for i in indices]
        k = max([s[0].shape[1] for s in soft if s is not None], default=1)
        device = batch.labels.device
        targets = torch.zeros((len(batch.labels), k), dtype=torch.long, device=device)
        weights = torch.zeros((len(batch.labels), k), dtype=torch.float32, device=device)
        constant = torch.zeros(len(batch.labels), dtype=torch.float32, device=device)
        targets[:, 0], weights[:, 0] = batch.labels, 1.0  # hard rows: one-hot on the label
        for j, s in enumerate(soft):
            if s is not None:
                rows = (batch.rows == j).nonzero().squeeze(1)
                targets[rows, : s[0].shape[1]], weights[rows] = s[0], 0.0
                weights[rows, : s[1].shape[1]] = s[1]
                constant[rows] = s[2]
        return targets, weights, constant

    def sample_losses(self, indices: Sequence[int], mode: str | None = None) -> torch.Tensor:
        """Per-sample mean target-token loss, shape [len(indices)]: cross-entropy on the target
        tokens, or KL to the recorded distribution for examples with soft targets."""
        with self._compute_precision():
            selected, is_logits, batch = self._at_targets(indices, mode or self.mode)
            targets, weights, constant = self._target_distributions(indices, batch)
            if is_logits:
                targets, weights, constant = (t.to(selected.device) for t in (targets, weights, constant))
                token_losses = logits_token_losses(selected, targets, weights, constant)
            else:  # .to() is a no-op unless the model is spread over several GPUs
                targets, weights, constant = (t.to(self.loss_device) for t in (targets, weights, constant))
                token_losses = head_token_losses(selected.to(self.loss_device), self.head, targets, weights, constant)
        return per_sample_mean(token_losses.to(batch.rows.device), batch)

    def _fast_loss(self, indices: Sequence[int]) -> float | None:
        try:
            return float(self.sample_losses(indices).mean())
        except _NoSharedPrefix:
            return None
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # an architecture we cannot slice
            log.warning("%s forward failed (%s)", self.mode, exc)
            return None

    def check_mode(self, indices: Sequence[int]) -> None:
        """Fall back to the reference loop if this architecture's fast path disagrees with it.
        Rows that run whole beside the shared prefix are checked too, in the same pass."""
        if self.mode == "reference":
            return
        if self.prefix_len:
            indices = list(indices) + [i for i, o in enumerate(self.offsets) if not o][:2]
        compute_dtype, self.compute_dtype = self.compute_dtype, None  # compare the paths exactly
        try:
            self._check_mode(indices)
        finally:
            self.compute_dtype = compute_dtype

    def _check_mode(self, indices: Sequence[int]) -> None:
        with torch.no_grad():
            ref = float(self.sample_losses(indices, "reference").mean())
            fast = self._fast_loss(indices)
            if self.prefix_len and (fast is None or abs(fast - ref) > _MODE_CHECK_RTOL * max(1.0, abs(ref))):
                log.warning("shared-prefix forward gives loss %s vs reference %.6f; running whole sequences", fast, ref)
                self._drop_shared_prefix()
                fast = self._fast_loss(indices)
        if fast is None or abs(fast - ref) > _MODE_CHECK_RTOL * max(1.0, abs(ref)):
            log.warning("%s forward gives loss %s vs reference %.6f; using the reference loop", self.mode, fast, ref)
            self.mode = "reference"


def resolve_edit_config(loaded: LoadedModel, cfg: EditConfig, n_facts: int) -> EditConfig:
    """Fill the per-model defaults (location, layers, prompt format, lr, batch size, replay) for
    a round over `n_facts` facts: some models have a measured large-fact-set setting."""
    location = location_from_config(loaded.model, cfg, n_facts)
    resolved = replace(
        cfg,
        location=location.template,
        layers=location.layers or None,
        prompt_format=resolve_prompt_format(cfg.prompt_format, loaded.tokenizer),
        lr=cfg.lr if cfg.lr is not None else default_lr(loaded.config),
        batch_size=cfg.batch_size if cfg.batch_size is not None else default_batch_size(loaded.config),
        replay_ratio=cfg.replay_ratio if cfg.replay_ratio is not None else default_replay_ratio(loaded.config),
        replay_weight=(cfg.replay_weight if cfg.replay_weight is not None
                       else default_replay_weight(loaded.model, cfg, n_facts)),
        replay_qa_share=(cfg.replay_qa_share if cfg.replay_qa_share is not None
                         else default_replay_qa_share(loaded.config) if cfg.replay_target == "distribution" else 0.0),
        compute_dtype=resolve_compute_dtype(cfg.compute_dtype, loaded),
    )
    if resolved.micro_batch_size is None or resolved.micro_batch_tokens is None:
        resolved = _with_pass_sizes(loaded, resolved, location)
    return resolved


def _with_pass_sizes(loaded: LoadedModel, resolved: EditConfig, location: EditLocation) -> EditConfig:
    """`resolved` with the pass sizes it leaves out filled for this device (engine.device): the
    CPU's 32 rows / 1,024 tokens, or what a quarter of a GPU's free memory holds."""
    names = resolve_location(loaded.model, location)
    stack = _layer_stack(loaded.model, names)
    n_layers = int(getattr(loaded.config, "num_hidden_layers", 0) or 0)
    above = n_layers - stack.start if stack is not None and resolved.forward_mode == "cached" else n_layers
    element = 4 if resolved.compute_dtype == "float32" else 2
    sizes = training_pass_sizes(loaded.model, loaded.device, above, element,
                                vocab_logits=resolved.forward_mode == "reference")
    log.info("passes of at most %d rows / %d tokens (%s)", sizes.rows, sizes.tokens, sizes.basis)
    return replace(resolved, micro_batch_size=resolved.micro_batch_size or sizes.rows,
                   micro_batch_tokens=resolved.micro_batch_tokens or sizes.tokens)


def edit(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    cfg: EditConfig,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    replay: Sequence[ReplayItem] | None = None,
    cache_dir: Path | None = None,
) -> EditResult:
    """Train the located tensors on `facts`; the model's own weights are left exactly as they were.

    When cfg.replay_ratio > 0, `replay` items (the base model's own continuations, see
    engine.replay) are mixed into the breadth-first batches; None builds the default pool
    (cached under `cache_dir` when given). Call on the unedited model.
    """
    if not facts:
        raise LocftError("no facts to edit")
    cfg = resolve_edit_config(loaded, cfg, len(facts))
    location = location_from_config(loaded.model, cfg, len(facts))
    names = resolve_location(loaded.model, location)
    prompt_format, lr = cfg.prompt_format, cfg.lr
    assert lr is not None and cfg.batch_size is not None
    tok = loaded.tokenizer
    examples = [build_example(tok, f.prompt, f.answer, prompt_format) for f in facts]
    n_augmented = 0
    if cfg.augment_prefixes and cfg.pipeline == "breadth-first":
        # rows [n, n + n*k): fact i's k prefixed copies at n + i*k ... (see _breadth_first)
        for fact, prompts in zip(facts, augmented_prompts(facts, cfg.augment_prefixes, cfg.seed)):
            examples += [build_example(tok, p, fact.answer, prompt_format) for p in prompts]
        n_augmented = len(examples) - len(facts)
    if cfg.replay_ratio and cfg.pipeline == "breadth-first":
        if replay is None:
            trained_on = [f.prompt for f in facts] + [p for f in facts for p in f.paraphrases]
            replay = replay_for(loaded, cfg, prompt_format, len(facts), exclude=trained_on,
                                cache_dir=cache_dir)
        examples += [example_from_ids(encode_prompt(tok, r.prompt, r.prompt_format or prompt_format), r.token_ids)
                     for r in replay]
    result = EditResult({}, location, prompt_format, lr, cfg.forward_mode, n_facts=len(facts))
    result.n_augmented = n_augmented
    result.n_replay = len(examples) - len(facts) - n_augmented
    result.config = cfg
    result.device = str(loaded.device)
    torch.manual_seed(cfg.seed)
    base = parameters_by_name(loaded.model, names)
    working = {n: p.detach().clone() for n, p in base.items()}

    with applied(loaded.model, working):
        params = list(parameters_by_name(loaded.model, names).values())
        for p in params:
            p.requires_grad_(True)
        try:
            compute_dtype = autocast_dtype(cfg.compute_dtype, loaded)
            result.compute_dtype = str(compute_dtype or loaded.dtype).removeprefix("torch.")
            forward = _Forward(loaded, examples, names, cfg.forward_mode, compute_dtype)
            t0 = time.perf_counter()
            if forward.mode == "cached":
                forward.build_cache(progress)
            result.cache_seconds = time.perf_counter() - t0
            forward.check_mode(list(range(min(cfg.batch_size, _MODE_CHECK_ROWS, len(facts)))))
            result.forward_mode = forward.mode
            result.shared_prefix_tokens = forward.prefix_len if forward.mode == "cached" else 0
            if cfg.replay_target == "distribution" and result.n_replay:
                forward.record_soft_targets(range(len(facts) + n_augmented, len(examples)), cfg.replay_top_k,
                                            cfg.micro_batch_size)
            loaded.model.train(False)  # dropout off: training is deterministic
            if cfg.null_space_energy and cfg.pipeline == "breadth-first":
                forward.projectors = _null_space_projectors(loaded, examples[len(facts) + n_augmented :], names,
                                                            cfg.null_space_energy, result)
            run = _breadth_first if cfg.pipeline == "breadth-first" else _depth_first
            t1 = time.perf_counter()
            result.setup_seconds = t1 - t0 - result.cache_seconds
            run(forward, params, cfg, lr, result, progress, should_stop)
            result.train_seconds = time.perf_counter() - t1
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        result.tensors = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in zip(names, params)}
    del forward
    release_freed_memory()  # a long-lived caller (the daemon, a server) gets the activations' pages back
    return result


def resolve_compute_dtype(compute_dtype: str, loaded: LoadedModel) -> str:
    """edit.compute_dtype with "auto" decided for this model and device."""
    if compute_dtype != "auto":
        return compute_dtype
    if loaded.dtype != torch.float32:
        return str(loaded.dtype).removeprefix("torch.")  # a half-precision model computes in its own dtype
    return "bfloat16" if native_bf16(loaded.device) else "float32"


def autocast_dtype(compute_dtype: str, loaded: LoadedModel) -> torch.dtype | None:
    """The autocast dtype for edit.compute_dtype on this model and device; None = no autocast."""
    compute_dtype = resolve_compute_dtype(compute_dtype, loaded)
    if compute_dtype == "float32" or loaded.dtype != torch.float32:
        return None  # float32, or a half-precision model that already computes in its own dtype
    if compute_dtype == "float16":
        raise ConfigError("edit.compute_dtype = 'float16' on a float32 model would need loss scaling; "
                          "use 'bfloat16' or 'float32'")
    return torch.bfloat16


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (faster than float32, not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # private helpers, present in torch >= 2.1; any failure means "not known to be native"
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise EditCancelled("training was cancelled")


def _accumulate_gradients(
    forward: _Forward, indices: Sequence[int], extra: Sequence[int], cfg: EditConfig
) -> tuple[float, float | None]:
    """Backward of (mean edit loss + replay_weight * mean replay loss) over one batch, run in
    passes of at most cfg.micro_batch_size rows and cfg.micro_batch_tokens padded tokens so that
    activation memory stays bounded; the summed gradient is the whole batch's. Returns the two
    means (replay None without replay rows)."""
    assert cfg.replay_weight is not None, "resolve_edit_config fills the replay weight"
    n_edit = len(indices)
    weights = [1.0 / n_edit] * n_edit + [cfg.replay_weight / max(len(extra), 1)] * len(extra)
    is_edit = [True] * n_edit + [False] * len(extra)
    # rows sorted by length, so each pass pads to its own longest row; the gradient is a sum over
    # rows and does not depend on their order
    rows = sorted(zip(list(indices) + list(extra), weights, is_edit), key=lambda r: forward.row_tokens(r[0]))
    assert cfg.micro_batch_size is not None and cfg.micro_batch_tokens is not None, "resolve_edit_config fills them"
    sums: torch.Tensor | None = None  # [edit, replay], summed on the device: one host sync per step
    for chunk in _passes(rows, [forward.row_tokens(r[0]) for r in rows], cfg.micro_batch_size,
                         cfg.micro_batch_tokens):
        per_sample = forward.sample_losses([r[0] for r in chunk])
        # each row's loss weight and whether it is an edit row, in one host-to-device copy
        host = torch.tensor([[r[1], float(r[2])] for r in chunk], dtype=torch.float64)
        scale_kind = host.to(per_sample.device, non_blocking=True)
        (per_sample * scale_kind[:, 0].to(per_sample.dtype)).sum().backward()
        losses, is_edit_row = per_sample.detach().double(), scale_kind[:, 1] > 0
        zero = losses.new_zeros(())
        chunk_sums = torch.stack([torch.where(is_edit_row, losses, zero).sum(),
                                  torch.where(is_edit_row, zero, losses).sum()])
        sums = chunk_sums if sums is None else sums + chunk_sums
    assert sums is not None
    edit_sum, replay_sum = sums.tolist()
    return edit_sum / n_edit, (replay_sum / len(extra) if extra else None)


def _passes(rows: Sequence[Any], tokens: Sequence[int], max_rows: int, max_tokens: int) -> Iterator[list[Any]]:
    """Consecutive slices of `rows` (sorted by `tokens`, ascending) of at most `max_rows` rows
    whose padded size (rows x the last row's tokens) stays within `max_tokens`; a longer row
    goes alone."""
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and end - start < max_rows and (end + 1 - start) * tokens[end] <= max_tokens:
            end += 1
        yield list(rows[start:end])
        start = end


@torch.no_grad()
def _decay_towards(params: Sequence[torch.nn.Parameter], origins: Sequence[torch.Tensor], rate: float) -> None:
    """Shrink each parameter's change from its origin by the factor (1 - rate)."""
    if not rate:
        return
    for p, origin in zip(params, origins):
        p.sub_(rate * (p - origin))


def _null_space_projectors(loaded: LoadedModel, replay: Sequence[Example], names: Sequence[str], energy: float,
                           result: EditResult) -> list[torch.Tensor]:
    if not replay:
        raise ConfigError("edit.null_space_energy needs replay prompts (edit.replay_ratio > 0)")
    t = time.perf_counter()
    moments = input_second_moments(loaded, replay, names)
    projectors = []
    for name in names:
        projector, rank = low_energy_projector(moments[name], energy)
        projectors.append(projector.to(loaded.device))
        result.null_space_ranks[name] = rank
    log.info("null space: protected input directions %s (%.1f s)", result.null_space_ranks, time.perf_counter() - t)
    return projectors


def _breadth_first(
    forward: _Forward,
    params: list[torch.nn.Parameter],
    cfg: EditConfig,
    lr: float,
    result: EditResult,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    n = result.n_facts  # examples [0, n) are facts, then n*k prefixed copies, then replay
    k_aug = result.n_augmented // n
    replay_ids = list(range(n + result.n_augmented, len(forward.examples)))
    optimizer = torch.optim.Adam(params, lr=lr)
    origins = [p.detach().clone() for p in params] if cfg.delta_decay or forward.projectors else []
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    replay_queue: list[int] = []
    started = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        t_epoch = time.perf_counter()
        order = torch.randperm(n, generator=generator).tolist()
        losses: list[float] = []
        replay_losses: list[float] = []
        skipped = 0
        for step in range(steps_per_epoch):
            _check_stop(should_stop)
            indices = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            edit_rows = indices + [n + i * k_aug + j for i in indices for j in range(k_aug)]
            extra: list[int] = []
            if replay_ids:
                k = max(1, round(len(indices) * cfg.replay_ratio))
                while len(replay_queue) < k:  # cycle through the pool in fresh shuffled orders
                    replay_queue += [replay_ids[i] for i in torch.randperm(len(replay_ids), generator=generator)]
                extra, replay_queue = replay_queue[:k], replay_queue[k:]
            optimizer.zero_grad(set_to_none=True)
            loss, replay_loss = _accumulate_gradients(forward, edit_rows, extra, cfg)
            result.examples_seen += len(indices)
            losses.append(loss)
            if replay_loss is not None:
                replay_losses.append(replay_loss)
            if loss < cfg.skip_loss:
                skipped += 1
            else:
                optimizer.step()
                _decay_towards(params, origins, lr * cfg.delta_decay)
                if forward.projectors:
                    project_change(params, origins, forward.projectors)
                result.steps += 1
            if progress:
                done = (epoch - 1) * n + min((step + 1) * cfg.batch_size, n)
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress(TrainProgress("train", epoch, cfg.max_epochs, step + 1, steps_per_epoch, losses[-1], rate))
        mean = sum(losses) / len(losses)
        replay_mean = sum(replay_losses) / len(replay_losses) if replay_losses else None
        result.epochs.append(EpochStats(epoch, mean, time.perf_counter() - t_epoch, len(losses), skipped, replay_mean))
        log.info("epoch %d/%d: mean loss %.4f (%d skipped)", epoch, cfg.max_epochs, mean, skipped)
        release_freed_memory()  # lowers the next epochs' peak a little (engine.memory)
        if mean < cfg.stop_loss:
            result.converged = True
            break


def _depth_first(
    forward: _Forward,
    params: list[torch.nn.Parameter],
    cfg: EditConfig,
    lr: float,
    result: EditResult,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Baseline: each fact alone, fresh Adam, up to max_epochs steps (the same per-fact step
    budget as breadth-first), stopping once its loss is below stop_loss; edits accumulate."""
    n = len(forward.examples)
    started = time.perf_counter()
    all_converged = True
    for i in range(n):
        t_fact = time.perf_counter()
        optimizer = torch.optim.Adam(params, lr=lr)
        losses: list[float] = []
        for step in range(cfg.max_epochs):
            _check_stop(should_stop)
            loss = forward.sample_losses([i]).mean()
            result.examples_seen += 1
            losses.append(loss.item())
            if losses[-1] < cfg.stop_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.steps += 1
        else:
            all_converged = False
        result.epochs.append(EpochStats(i + 1, losses[-1], time.perf_counter() - t_fact, len(losses), 0))
        if progress:
            rate = (i + 1) / max(time.perf_counter() - started, 1e-9)
            progress(TrainProgress("train", i + 1, n, len(losses), cfg.max_epochs, losses[-1], rate))
    result.converged = all_converged
