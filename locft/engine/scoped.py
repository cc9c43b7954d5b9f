"""How a version answers a prompt: the one code path behind ask, the API, evaluation, the gates,
lm-eval capability, bench and locate.

`answering(loaded, tensors, scope)` is a context manager. Inside it the model answers as the
version does:

- scope None (`serve.scope = "always"`, the paper's behaviour): the tuned tensors are swapped in
  for every prompt (`engine.weights.applied`).
- with a scope: the base weights stay in place. A hook on the model sees each forward's token
  ids; at a prompt's first pass (no KV cache yet) it decides per row whether that prompt is in
  scope (`Scope.names_a_subject`, and for similarity a hook on an early decoder layer, which runs
  before any tuned layer in the same pass). Each module that owns a tuned tensor then recomputes
  its output for the in-scope rows only, with the tuned tensor. Out-of-scope rows never touch a
  tuned tensor: their logits are the base model's exactly. Later generation steps (one new
  token, a KV cache) keep the rows' decision. Nothing is copied but the tuned tensors.

Only leaf modules (Linear, norms: no state, one input) can be recomputed this way; a version
whose tensors sit elsewhere is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from locft.engine.weights import applied, parameters_by_name
from locft.errors import SnapshotError

if TYPE_CHECKING:
    from locft.engine.model_io import LoadedModel
    from locft.engine.scope import Scope


# Per row of the next forwards: decide the scope on the first N real tokens only (the prompt of a
# teacher-forced prompt + continuation), as generation decides on the prompt before it continues.
_PROMPT_LENGTHS: ContextVar[Sequence[int] | None] = ContextVar("locft_scope_prompt_lengths", default=None)


@contextmanager
def deciding_on_prompts(lengths: Sequence[int]) -> Iterator[None]:
    """Within the block, a scoped model decides each row's scope on its first `lengths[i]` tokens:
    a probe's base continuation fed back (token locality) must not put the probe in scope."""
    token = _PROMPT_LENGTHS.set(list(lengths))
    try:
        yield
    finally:
        _PROMPT_LENGTHS.reset(token)


def decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The decoder's list of layers (model.model.layers for Llama-style models)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None) if decoder is not None else None
    if not isinstance(layers, torch.nn.ModuleList):
        raise SnapshotError("this model's decoder layers could not be found (no get_decoder().layers)")
    return cast(Sequence[torch.nn.Module], layers)  # indexable and sized, though not registered a Sequence


@dataclass
class ScopeStats:
    """Rows decided so far: what a report or /metrics shows about the scope."""

    rows: int = 0
    in_scope: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "in_scope": self.in_scope}


@dataclass
class _Decision:
    mask: torch.Tensor | None = None  # per row: in scope
    attention_mask: torch.Tensor | None = None
    subject_hits: torch.Tensor | None = None
    pending_similarity: bool = False


@dataclass
class ScopedModel:
    """Installs the hooks that apply `tensors` to the in-scope rows of every forward (see the
    module docstring). Use through `answering`."""

    loaded: LoadedModel
    tensors: Mapping[str, torch.Tensor]
    scope: Scope
    stats: ScopeStats = field(default_factory=ScopeStats)
    _decision: _Decision = field(default_factory=_Decision)
    _handles: list[Any] = field(default_factory=list)
    _recomputing: bool = False  # functional_call runs the module's hooks again: not on our own call

    def install(self) -> None:
        model = self.loaded.model
        params = parameters_by_name(model, list(self.tensors))
        modules = dict(model.named_modules())
        owners: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in self.tensors.items():
            owner, _, attr = name.rpartition(".")
            module = modules.get(owner)
            if module is None or any(True for _ in module.children()):
                raise SnapshotError(f"{name}: a scoped version can only tune parameters of leaf modules "
                                    "(Linear, norms); serve it with serve.scope = \"always\"")
            p = params[name]
            if tuple(tensor.shape) != tuple(p.shape):
                raise SnapshotError(f"{name}: shape {tuple(tensor.shape)} does not fit the model's {tuple(p.shape)}")
            owners.setdefault(owner, {})[attr] = tensor.to(device=p.device, dtype=p.dtype)
        try:
            self._handles.append(model.register_forward_pre_hook(self._decide, with_kwargs=True))
            if self.scope.uses_similarity:
                layer = decoder_layers(model)[int(self.scope.layer or 0)]
                self._handles.append(layer.register_forward_hook(self._similarity))
            for owner, replaced in owners.items():
                self._handles.append(modules[owner].register_forward_hook(self._recompute(replaced)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._decision = _Decision()

    # ---- the hooks ----------------------------------------------------------------------------------

    def _decide(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        # transformers 5 passes the KV cache as `cache` (older releases: `past_key_values`)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        first_pass = cache is None or _cached_length(cache) == 0
        if not first_pass and self._decision.mask is not None:
            return  # a generation step: the rows keep their prompt's decision
        if input_ids is None:
            raise SnapshotError("a scoped version needs token ids to decide its scope (inputs_embeds was given)")
        attention_mask = kwargs.get("attention_mask")
        if not (isinstance(attention_mask, torch.Tensor) and attention_mask.shape == input_ids.shape):
            attention_mask = _unpadded(input_ids, self.loaded.tokenizer.pad_token_id)
        lengths = _PROMPT_LENGTHS.get()
        if lengths is not None and len(lengths) == input_ids.shape[0]:
            # only each row's first lengths[i] real tokens count, for the similarity pool too
            real = attention_mask.bool()
            attention_mask = (real & (real.long().cumsum(dim=1) <= torch.tensor(
                lengths, device=real.device).unsqueeze(1))).long()
        keep = attention_mask.bool().tolist()
        rows = [[t for t, k in zip(row, ks) if k] for row, ks in zip(input_ids.tolist(), keep)]
        tok = self.loaded.tokenizer
        hits = [self.scope.uses_subject and self.scope.names_a_subject(str(tok.decode(row, skip_special_tokens=True)))
                for row in rows]
        subject_hits = torch.tensor(hits, dtype=torch.bool, device=input_ids.device)
        self._decision = _Decision(
            mask=None if self.scope.uses_similarity else subject_hits,
            attention_mask=attention_mask, subject_hits=subject_hits,
            pending_similarity=self.scope.uses_similarity,
        )
        if not self.scope.uses_similarity:
            self._count(subject_hits)

    def _similarity(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        from locft.engine.scope import mean_pool

        decision = self._decision
        if not decision.pending_similarity or decision.subject_hits is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        features = mean_pool(hidden, decision.attention_mask)
        mask = self.scope.decide(decision.subject_hits, self.scope.similar(features).to(decision.subject_hits.device))
        decision.mask, decision.pending_similarity = mask, False
        self._count(mask)

    def _count(self, mask: torch.Tensor) -> None:
        self.stats.rows += int(mask.numel())
        self.stats.in_scope += int(mask.sum())

    def _recompute(self, replaced: dict[str, torch.Tensor]) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            mask = self._decision.mask
            if self._recomputing or mask is None or not bool(mask.any()):
                return None
            if mask.shape[0] != output.shape[0]:
                raise SnapshotError(f"scoped version: {mask.shape[0]} rows decided, {output.shape[0]} in the batch")
            rows = mask.nonzero().flatten().to(output.device)
            self._recomputing = True
            try:
                tuned = torch.func.functional_call(module, replaced, (args[0].index_select(0, rows),))
            finally:
                self._recomputing = False
            return output.index_copy(0, rows, tuned.to(output.dtype))

        return hook


def _unpadded(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """1 where a token is not padding: the leading and trailing runs of the pad id are padding
    (generation pads on the left, lm-eval on the right)."""
    if pad_id is None:
        return torch.ones_like(input_ids)
    real = input_ids != pad_id
    after_first = real.int().cumsum(dim=1) > 0
    before_last = real.flip(1).int().cumsum(dim=1).flip(1) > 0
    return (after_first & before_last).long()


def _cached_length(cache: Any) -> int:
    get = getattr(cache, "get_seq_length", None)
    if callable(get):
        return int(get())
    try:  # legacy tuple caches: ((key, value), ...) with keys [batch, heads, seq, dim]
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 0


@contextmanager
def answering(loaded: LoadedModel, tensors: Mapping[str, torch.Tensor],
              scope: Scope | None = None, stats: ScopeStats | None = None) -> Iterator[ScopeStats]:
    """Within the block, `loaded.model` answers as the version with these tensors and this scope
    (None: the tensors apply to every prompt). Afterwards exactly the base model again. Yields
    the scope's running counts (rows decided, rows in scope)."""
    counts = stats if stats is not None else ScopeStats()
    if not tensors:
        yield counts
        return
    if scope is None:
        with applied(loaded.model, tensors):
            yield counts
        return
    scoped = ScopedModel(loaded, tensors, scope, counts)
    scoped.install()
    try:
        yield counts
    finally:
        scoped.remove()


def tuned_layer_indices(model: torch.nn.Module, names: Sequence[str]) -> list[int]:
    """The decoder layers that hold the tuned tensors (a similarity scope must decide below them)."""
    layers = {id(m): i for i, m in enumerate(decoder_layers(model))}
    prefixes = {name: layers[id(m)] for name, m in model.named_modules() if id(m) in layers}
    found = set()
    for n in names:
        for prefix, index in prefixes.items():
            if n.startswith(prefix + "."):
                found.add(index)
    return sorted(found)
