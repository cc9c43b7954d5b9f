"""The training forward: the loss of a batch of training rows, in one of three modes.

The modes give the same loss (`Forward.check_mode` checks it on the first batch, else falls
back to the reference loop):
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
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from locft.engine.data import Batch, Example, collate, per_sample_mean, to_device
from locft.engine.device import module_device
from locft.engine.model_io import LoadedModel
from locft.engine.precision import computing_in
from locft.engine.result import TrainProgress, TrainProgressCallback
from locft.engine.targets import layer_index
from locft.engine.token_loss import head_token_losses, is_frozen_linear, logits_token_losses

log = logging.getLogger(__name__)

_CAPTURE_BATCH = 64
_MODE_CHECK_RTOL = 1e-3
_MIN_SHARED_PREFIX = 4  # shorter common prefixes are not worth a second forward call


class _Captured(Exception):
    """Raised from a pre-hook to stop a forward pass once the wanted activations are captured."""


@dataclass
class LayerStack:
    decoder: torch.nn.Module  # e.g. LlamaModel
    attr: str  # its ModuleList attribute, e.g. "layers"
    start: int  # lowest tuned layer


def layer_stack(model: torch.nn.Module, names: Sequence[str]) -> LayerStack | None:
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
    layers = [layer for n in names if (layer := layer_index(n, f"{prefix}.{attr}")) is not None]
    if len(layers) != len(names):
        return None
    return LayerStack(decoder, attr, min(layers))


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


class _PackedRows:
    """Rows of different lengths in one buffer (not one heap block per row, between the capture
    batches' freed activations), and one zero row after them that padding reads: `padded` gathers
    any rows into a right-padded batch with one indexing operation."""

    def __init__(self, lengths: Sequence[int], width: int, dtype: torch.dtype, device: torch.device):
        self.lengths = torch.tensor(list(lengths), dtype=torch.long)
        self.starts = self.lengths.cumsum(0) - self.lengths
        self.pad_row = int(self.lengths.sum())
        self.buffer = torch.empty((self.pad_row + 1, width), dtype=dtype, device=device)
        self.buffer[self.pad_row].zero_()
        self.rows = list(self.buffer[: self.pad_row].split(list(lengths)))

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def gather_index(self, indices: Sequence[int]) -> torch.Tensor:
        """[len(indices), longest row] positions in the buffer (on the host): each row's own, then
        the zero row."""
        chosen = torch.tensor(list(indices), dtype=torch.long)
        lengths = self.lengths[chosen]
        positions = torch.arange(int(lengths.max()))[None, :]
        return torch.where(positions < lengths[:, None], self.starts[chosen][:, None] + positions, self.pad_row)

    def padded(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index` (a gather_index on the buffer's device) point at: [rows, longest, width]."""
        return self.buffer[index]


def _per_row(shared: Any, rows: int) -> Any:
    """A fresh KV cache holding the shared prefix's keys and values once per row (expanded views:
    the batch's own tokens are appended to new tensors, `shared` stays as it is)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, layer in enumerate(shared.layers):
        cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i)
    return cache


@contextmanager
def _only_layers_from(stack: LayerStack) -> Iterator[None]:
    """Run the decoder's own forward over layers[start:] only (same module objects)."""
    full = getattr(stack.decoder, stack.attr)
    setattr(stack.decoder, stack.attr, torch.nn.ModuleList(list(full)[stack.start :]))
    try:
        yield
    finally:
        setattr(stack.decoder, stack.attr, full)


class Forward:
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
        self.stack = layer_stack(self.model, names)
        self.mode = mode
        if mode == "cached" and self.stack is None:
            log.warning("cached forward is not possible for these parameters; using full forward")
            self.mode = "full"
        self.cache: _PackedRows | None = None  # per example, from position offsets[i] on
        self.prefix_len = 0
        self.offsets: list[int] = [0] * len(examples)  # prefix_len for rows that share the prefix, else 0
        self.prefix_hidden: torch.Tensor | None = None  # [1, prefix_len, hidden]
        # per example index: (top-k token ids, their renormalized probabilities, sum p log p), one
        # row per target position; examples listed here train towards a distribution (KL)
        self.soft: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # autocast dtype of the training forward/backward; None: the model's own dtype. The
        # activation cache and the forward-mode check always run in the model's dtype (exact).
        self.compute_dtype = compute_dtype

    def build_cache(self, progress: TrainProgressCallback | None = None) -> None:
        """Hidden states entering layer `start`, per example, computed once without grad.

        All rows live in one buffer allocated up front (_PackedRows). The shared
        prefix runs once here too: rows that start with it run only their own tokens, attending
        to the prefix's keys and values."""
        assert self.stack is not None
        # the shared prefix depends only on token ids: known before capture, so each example keeps
        # only its own part (never two copies of the whole cache at once)
        keep_from, shares = _shared_prefix(self.examples)
        offsets = [keep_from if s else 0 for s in shares]
        by_length = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].input_ids))
        groups = [[i for i in by_length if offsets[i]], [i for i in by_length if not offsets[i]]]
        self.cache, self.prefix_hidden = None, None
        with torch.no_grad(), self._capturing() as captured:
            prefix_kv = self._capture_prefix(captured, self.examples[groups[0][0]].input_ids[:keep_from]) \
                if keep_from else None
            done = 0
            for group, kv in ((groups[0], prefix_kv), (groups[1], None)):
                for b in range(0, len(group), _CAPTURE_BATCH):
                    idx = group[b : b + _CAPTURE_BATCH]
                    hidden, skipped, kv = self._capture_batch(captured, idx, offsets, kv)
                    if self.cache is None:
                        self.cache = _PackedRows([len(e.input_ids) - o for e, o in zip(self.examples, offsets)],
                                                 hidden.shape[-1], hidden.dtype, self._cache_device())
                    for j, i in enumerate(idx):
                        own = len(self.examples[i].input_ids) - offsets[i]
                        self.cache[i].copy_(hidden[j, skipped[j] : skipped[j] + own])
                    done += len(idx)
                    if progress:  # rows captured so far, of all rows
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
        assert self.stack is not None
        captured.clear()
        try:
            self.stack.decoder(**inputs)
        except _Captured:
            pass
        return captured[0]

    def _capture_prefix(self, captured: list[torch.Tensor], prefix_ids: Sequence[int]) -> Any:
        """Run the shared prefix once; keep its hidden state and return its keys and values in
        the layers below `start` (None where this architecture does not take a KV cache)."""
        from transformers import DynamicCache

        assert self.stack is not None
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
        kv = DynamicCache()
        try:
            self.prefix_hidden = self._run_to_start(captured, input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    use_cache=True, **{self._cache_kw(): kv}).clone()
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:  # an architecture we cannot slice
            log.warning("shared-prefix capture failed (%s); capturing whole rows", exc)
            return None
        # below layer 0 there is nothing to attend to: rows then run whole
        return kv if self.stack.start and len(kv.layers) == self.stack.start else None

    def _cache_kw(self) -> str:
        assert self.stack is not None
        params = inspect.signature(self.stack.decoder.forward).parameters
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
        assert self.cache is not None
        prefix = self.prefix_hidden[0]
        cache = _PackedRows([o + len(c) for o, c in zip(self.offsets, self.cache.rows)], prefix.shape[-1],
                            prefix.dtype, self.cache.buffer.device)
        for whole, own, offset in zip(cache.rows, self.cache.rows, self.offsets):
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
                # no mask: the prefix has no padding (a mask of ones would make the model check that on the host)
                self.stack.decoder(inputs_embeds=self.prefix_hidden, use_cache=True, **{self._cache_kw(): shared})
                prefix_mask = shares.to(attention_mask.dtype)[:, None].expand(b, p)
                positions = torch.arange(p, p + hidden_in.shape[1], device=hidden_in.device).expand(b, -1)
                out = self.stack.decoder(
                    inputs_embeds=hidden_in, attention_mask=torch.cat([prefix_mask, attention_mask], 1),
                    position_ids=positions, use_cache=True, **{self._cache_kw(): _per_row(shared, b)},
                )
            return out.last_hidden_state

    def _compute_precision(self) -> AbstractContextManager[None]:
        return computing_in(self.device, self.compute_dtype)

    def _at_targets(self, indices: Sequence[int], mode: str) -> tuple[torch.Tensor, bool, Batch]:
        """At the batch's target positions (flattened as batch.rows/cols): the final hidden states
        (is_logits False), or the logits where the head is not applied separately (the reference
        loop, a head that trains); and the batch."""
        batch = collate([self.examples[i] for i in indices], self.pad_id, self.device)
        if mode == "reference":
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            return logits[batch.rows, batch.cols], True, batch
        if mode == "cached":
            assert self.cache is not None
            # the rows' places in the cache and their offsets in one host-to-device copy; the
            # batch and its mask are gathered on the device
            index = self.cache.gather_index(indices)
            host = torch.cat([index.view(-1), torch.tensor([self.offsets[i] for i in indices], dtype=torch.long)])
            places, offsets = to_device(host, self.cache.buffer.device).split([index.numel(), len(indices)])
            places = places.view(index.shape)
            hidden_in = self.cache.padded(places)
            own_mask = (places != self.cache.pad_row).to(batch.attention_mask.dtype)
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

