"""A version's scope: which prompts its edits are about.

A scoped version answers a prompt with its tuned tensors only when the prompt is *in scope*, and
with the untouched base weights otherwise (`locft.engine.scoped`). The scope is built in the
round from the frozen fact set alone: each fact's edit prompt and subject. The paraphrases and
probes that measure generalization and locality are never looked at, so the gates measure it
honestly.

Two signals, combined by `match`:

- **subject**: the prompt names a fact's subject, as whole words after normalization (case,
  Unicode forms, punctuation and invisible characters do not matter; "Kiss Me, Kate" matches
  "kiss me kate", "Australia" matches "Australia's" but not "Australian"). A fact without a
  subject gets one found in its prompt (`locft.engine.subjects`, which holds the subject
  signal: quoted text, else the name, a run of capitalized words, that fewest of the fact set's
  prompts share, else its rarest content word).
- **similarity**: the base model's hidden state at one early layer, averaged over the prompt's
  tokens, is within a cosine threshold of some fact prompt's. The threshold is calibrated per
  round on generic prompts that no gate uses (the replay pool's offline data): the
  `1 - false_positive_rate` quantile of their best similarity.

`"subject"` (the default), `"similarity"`, or `"either"` (in scope when either signal says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from locft.engine.subjects import ScopeKey, chat_boilerplate, contains_words, normalize_words, subject_keys
from locft.errors import ConfigError, SnapshotError

if TYPE_CHECKING:
    import torch

    from locft.config import EditConfig
    from locft.engine.model_io import LoadedModel
    from locft.facts import EditFact

ScopeMatch = Literal["subject", "similarity", "either"]
SCOPE_MATCHES: tuple[str, ...] = ("subject", "similarity", "either")
SCOPE_FORMAT = "locft-scope/1"


@dataclass
class Scope:
    """Which prompts a version's edits are about (see the module docstring)."""

    match: ScopeMatch
    keys: list[ScopeKey]
    # chat-template text that every chat prompt carries (a system prompt): never a reason to be in scope
    boilerplate: tuple[tuple[str, ...], ...] = ()
    layer: int | None = None  # similarity: the decoder layer whose output is pooled
    threshold: float | None = None  # similarity: in scope from this cosine on
    false_positive_rate: float | None = None  # similarity: the calibration target
    embeddings: torch.Tensor | None = None  # similarity: one unit vector per fact prompt
    report: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, list[tuple[str, ...]]] = field(default_factory=dict, init=False, repr=False)
    _part_index: dict[str, list[tuple[tuple[str, ...], ...]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.match not in SCOPE_MATCHES:
            raise ConfigError(f"unknown scope match {self.match!r}; use one of {', '.join(SCOPE_MATCHES)}")
        for key in self.keys:
            if key.words:
                self._index.setdefault(key.words[0], []).append(key.words)
            if key.parts:
                self._part_index.setdefault(key.parts[0][0], []).append(key.parts)

    @property
    def uses_subject(self) -> bool:
        return self.match in ("subject", "either")

    @property
    def uses_similarity(self) -> bool:
        return self.match in ("similarity", "either") and self.embeddings is not None

    # ---- deciding --------------------------------------------------------------------------------

    def _strip_boilerplate(self, words: tuple[str, ...]) -> tuple[str, ...]:
        for block in self.boilerplate:
            n = len(block)
            if not n:
                continue
            for i in range(len(words) - n + 1):
                if words[i:i + n] == block:
                    words = words[:i] + words[i + n:]
                    break
        return words

    def names_a_subject(self, text: str) -> bool:
        """The text names some fact's subject (whole words; the chat boilerplate ignored)."""
        words = self._strip_boilerplate(normalize_words(text))
        for i, word in enumerate(words):
            for key in self._index.get(word, ()):
                if words[i:i + len(key)] == key:
                    return True
        for word in set(words):
            for parts in self._part_index.get(word, ()):
                if all(contains_words(words, part) for part in parts):
                    return True
        return False

    def similar(self, features: torch.Tensor) -> torch.Tensor:
        """Per row of pooled base features: the best cosine to any fact prompt is over the threshold."""
        import torch

        if self.embeddings is None or self.threshold is None:
            return torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        return best_similarity(features, self.embeddings) >= self.threshold

    def decide(self, subject_hits: torch.Tensor, similarity_hits: torch.Tensor | None) -> torch.Tensor:
        """Combine the two signals (a missing similarity signal counts as no hit)."""
        if similarity_hits is None:
            similarity_hits = subject_hits.new_zeros(subject_hits.shape)
        if self.match == "subject":
            return subject_hits
        if self.match == "similarity":
            return similarity_hits
        return subject_hits | similarity_hits

    # ---- storing ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SCOPE_FORMAT,
            "match": self.match,
            "keys": [{"words": list(k.words), "source": k.source, "fact_id": k.fact_id}
                     | ({"parts": [list(p) for p in k.parts]} if k.parts else {}) for k in self.keys],
            "boilerplate": [list(b) for b in self.boilerplate],
            "layer": self.layer,
            "threshold": self.threshold,
            "false_positive_rate": self.false_positive_rate,
            "report": self.report,
        }

    @classmethod
    def from_json(cls, data: Any, embeddings: torch.Tensor | None = None) -> Scope:
        try:
            if data.get("format") != SCOPE_FORMAT:
                raise ValueError(f"not a {SCOPE_FORMAT} record")
            keys = [ScopeKey(tuple(str(w) for w in k["words"]), k["source"], k.get("fact_id"),
                             tuple(tuple(str(w) for w in part) for part in k.get("parts", ()))) for k in data["keys"]]
            return cls(
                match=data["match"], keys=keys, boilerplate=tuple(tuple(b) for b in data.get("boilerplate", ())),
                layer=data.get("layer"), threshold=data.get("threshold"),
                false_positive_rate=data.get("false_positive_rate"), embeddings=embeddings,
                report=dict(data.get("report") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as exc:
            raise SnapshotError(f"the snapshot's scope is unreadable ({exc})") from None

    def summary(self) -> dict[str, Any]:
        """What `locft versions show` and the round report print."""
        given = sum(1 for k in self.keys if k.source == "given")
        out: dict[str, Any] = {"match": self.match, "facts": len(self.keys), "subjects_given": given,
                               "subjects_found": len(self.keys) - given}
        if self.uses_similarity:
            out |= {"layer": self.layer, "threshold": self.threshold, "false_positive_rate": self.false_positive_rate}
        return out | {k: v for k, v in self.report.items() if k not in out}


def best_similarity(features: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Per row: the highest cosine between the row's pooled features and any fact's."""
    import torch

    rows = torch.nn.functional.normalize(features.float(), dim=-1)
    keys = embeddings.to(device=rows.device, dtype=rows.dtype)
    if keys.shape[0] == 0:
        return torch.full((rows.shape[0],), -1.0, device=rows.device)
    return (rows @ keys.T).max(dim=-1).values


def default_scope_layer(n_layers: int) -> int:
    """An early layer: the prompt's meaning is formed there and no edit is tuned that low."""
    return max(0, round(n_layers * 0.27) - 1)


def pooled_features(loaded: LoadedModel, prompts: Sequence[str], prompt_format: str, layer: int,
                    batch_size: int = 32) -> torch.Tensor:
    """Mean over each prompt's tokens of the base model's output of decoder layer `layer` (the
    forward stops there)."""
    import torch

    from locft.engine.data import encode_prompt
    from locft.engine.generate import left_padded
    from locft.engine.scoped import decoder_layers

    tok = loaded.tokenizer
    encoded = [encode_prompt(tok, p, prompt_format) for p in prompts]
    target = decoder_layers(loaded.model)[layer]
    out = torch.zeros((len(prompts), int(loaded.model.config.hidden_size)), dtype=torch.float32)

    class _Stop(Exception):
        pass

    captured: list[torch.Tensor] = []

    def hook(module: Any, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = target.register_forward_hook(hook)
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                ids, mask = left_padded([encoded[i] for i in idx], tok.pad_token_id)
                captured.clear()
                try:
                    loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device))
                except _Stop:
                    pass
                pooled = mean_pool(captured[0], mask.to(captured[0].device))
                out[idx] = pooled.float().cpu()
    finally:
        handle.remove()
    return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden.float().mean(dim=1)
    m = attention_mask[:, -hidden.shape[1]:].to(hidden.dtype).unsqueeze(-1)
    return ((hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).float()


def build_scope(
    loaded: LoadedModel,
    facts: Sequence[EditFact],
    prompt_format: str,
    match: ScopeMatch = "subject",
    *,
    calibration_prompts: Sequence[str] = (),
    false_positive_rate: float = 0.01,
    layer: int | None = None,
    tuned_layers: Iterable[int] = (),
) -> Scope:
    """The scope of a version trained on `facts`. Similarity needs `calibration_prompts`: generic
    prompts that no gate uses, on which the threshold lets `false_positive_rate` of them in."""
    import torch

    if match not in SCOPE_MATCHES:
        raise ConfigError(f"unknown scope match {match!r}; use one of {', '.join(SCOPE_MATCHES)}")
    keys, counts = subject_keys(facts)
    report: dict[str, Any] = dict(counts)
    scope = Scope(match, keys, chat_boilerplate(loaded.tokenizer, prompt_format), report=report)
    if match == "subject":
        return scope
    n_layers = len(_layers_of(loaded))
    layer = default_scope_layer(n_layers) if layer is None else layer
    tuned = sorted(set(tuned_layers))
    if tuned and layer >= tuned[0]:
        raise ConfigError(f"the scope's similarity layer ({layer}) must come before the first tuned layer ({tuned[0]})")
    if not calibration_prompts:
        raise ConfigError("similarity scope needs calibration prompts (generic prompts no gate uses)")
    fact_features = pooled_features(loaded, [f.prompt for f in facts], prompt_format, layer)
    embeddings = torch.nn.functional.normalize(fact_features, dim=-1)
    negatives = pooled_features(loaded, list(calibration_prompts), prompt_format, layer)
    best = best_similarity(negatives, embeddings)
    threshold = float(torch.quantile(best, 1.0 - false_positive_rate)) + 1e-6
    scope.layer, scope.threshold, scope.false_positive_rate = layer, threshold, false_positive_rate
    scope.embeddings = embeddings
    scope.report |= {"calibration_prompts": len(calibration_prompts)}
    return scope


def _layers_of(loaded: LoadedModel) -> Sequence[Any]:
    from locft.engine.scoped import decoder_layers

    return decoder_layers(loaded.model)


def scope_file_payload(scope: Scope) -> tuple[bytes, dict[str, torch.Tensor]]:
    """(scope.json bytes, tensors for scope.safetensors: the fact embeddings, when any)."""
    text = json.dumps(scope.to_json(), indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    tensors = {"embeddings": scope.embeddings.contiguous()} if scope.embeddings is not None else {}
    return text, tensors


CALIBRATION_PROMPTS = 1000  # generic prompts for the similarity threshold (1% of them = 10 let in)


def scope_for_facts(loaded: LoadedModel, facts: Sequence[EditFact], prompt_format: str, match: ScopeMatch,
                    *, false_positive_rate: float = 0.01, layer: int | None = None,
                    tuned_layers: Iterable[int] = (), exclude: Iterable[str] = ()) -> Scope:
    """`build_scope` with its calibration prompts drawn from the offline generic pool (the replay
    module's data, which no gate uses), none of them in `exclude` (the gates' prompts)."""
    calibration: list[str] = []
    if match != "subject":
        from locft.engine.replay import default_replay_prompts

        calibration = default_replay_prompts(CALIBRATION_PROMPTS, exclude=exclude, pool="mixed")
    return build_scope(loaded, facts, prompt_format, match,
                       calibration_prompts=calibration, false_positive_rate=false_positive_rate, layer=layer,
                       tuned_layers=tuned_layers)


def scope_coverage(loaded: LoadedModel, scope: Scope, prompts: Sequence[str], prompt_format: str) -> list[bool]:
    """Per prompt: would the version answer it with its edits? The same decision the scoped model
    makes (the prompt as the model sees it, decoded), for reports: a scope's recall on paraphrases,
    its false positives on unrelated prompts."""
    import torch

    from locft.engine.data import encode_prompt

    if not prompts:
        return []
    tok = loaded.tokenizer
    subject = [scope.uses_subject and scope.names_a_subject(
        str(tok.decode(encode_prompt(tok, p, prompt_format), skip_special_tokens=True))) for p in prompts]
    hits = torch.tensor(subject, dtype=torch.bool)
    similarity = None
    if scope.uses_similarity:
        similarity = scope.similar(pooled_features(loaded, prompts, prompt_format, int(scope.layer or 0)))
    return [bool(x) for x in scope.decide(hits, similarity).tolist()]


def coverage_share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def scoped_edit_defaults(cfg: EditConfig, scoped: bool) -> EditConfig:
    """Under a gated scope the locality-preserving replay is off unless set: out-of-scope prompts
    get the base model exactly, which replay only approximated at most of a round's training time."""
    from dataclasses import replace

    return replace(cfg, replay_ratio=0.0) if scoped and cfg.replay_ratio is None else cfg
