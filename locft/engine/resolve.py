"""An edit config with the per-model defaults filled in: what a round actually trains with.

EditConfig leaves the location, layers, prompt format, lr, batch size, replay and pass sizes to
the model (`None`); they come from the architecture's preset (engine.targets), the tokenizer and
the device (engine.device). The resolved config is what results and round records store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from locft.config import EditConfig
from locft.engine.data import resolve_prompt_format
from locft.engine.device import training_pass_sizes
from locft.engine.forward import layer_stack
from locft.engine.model_io import LoadedModel
from locft.engine.precision import resolve_compute_dtype
from locft.engine.targets import (
    EditLocation,
    choose_edit_location,
    default_batch_size,
    default_lr,
    default_replay_qa_share,
    default_replay_ratio,
    default_replay_weight,
    resolve_location,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedEdit:
    """A resolved config, the location it names and that location's exact parameter names."""

    config: EditConfig
    location: EditLocation
    names: list[str]


def resolve_edit_config(loaded: LoadedModel, cfg: EditConfig, n_facts: int) -> EditConfig:
    """Fill the per-model defaults (location, layers, prompt format, lr, batch size, replay) for
    a round over `n_facts` facts: some models have a measured large-fact-set setting."""
    resolved, location = _with_defaults(loaded, cfg, n_facts)
    if resolved.micro_batch_size is None or resolved.micro_batch_tokens is None:
        resolved = _with_pass_sizes(loaded, resolved, resolve_location(loaded.model, location))
    return resolved


def resolve_edit(loaded: LoadedModel, cfg: EditConfig, n_facts: int) -> ResolvedEdit:
    """resolve_edit_config, and where the edit trains, resolved once for both."""
    resolved, location = _with_defaults(loaded, cfg, n_facts)
    names = resolve_location(loaded.model, location)
    if resolved.micro_batch_size is None or resolved.micro_batch_tokens is None:
        resolved = _with_pass_sizes(loaded, resolved, names)
    return ResolvedEdit(resolved, location, names)


def _with_defaults(loaded: LoadedModel, cfg: EditConfig, n_facts: int) -> tuple[EditConfig, EditLocation]:
    location = choose_edit_location(loaded.model, cfg, n_facts)
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
    return resolved, location


def _with_pass_sizes(loaded: LoadedModel, resolved: EditConfig, names: list[str]) -> EditConfig:
    """`resolved` with the pass sizes it leaves out filled for this device (engine.device): the
    CPU's 32 rows / 1,024 tokens, or what a quarter of a GPU's free memory holds."""
    stack = layer_stack(loaded.model, names)
    n_layers = int(getattr(loaded.config, "num_hidden_layers", 0) or 0)
    above = n_layers - stack.start if stack is not None and resolved.forward_mode == "cached" else n_layers
    element = 4 if resolved.compute_dtype == "float32" else 2
    sizes = training_pass_sizes(loaded.model, loaded.device, above, element,
                                vocab_logits=resolved.forward_mode == "reference")
    log.info("passes of at most %d rows / %d tokens (%s)", sizes.rows, sizes.tokens, sizes.basis)
    return replace(resolved, micro_batch_size=resolved.micro_batch_size or sizes.rows,
                   micro_batch_tokens=resolved.micro_batch_tokens or sizes.tokens)
