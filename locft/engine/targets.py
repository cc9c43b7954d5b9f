"""Edit locations: a parameter-name template plus layers, resolved by EXACT name.

`model.layers.{L}.mlp.down_proj.weight` with layers (22,) names one weight matrix; a template
that names a module (`model.layers.{L}`) selects every parameter inside it (the paper's
"whole layer" choice for Mistral). Architecture comes from `model.config`, never from a name.

Where the location is chosen: `choose_edit_location` (the config's, else the architecture's
preset in PRESETS, else the MLP output projection at proportional depth). PRESETS also holds
each architecture's measured lr, batch size and replay defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from locft.config import EditConfig
from locft.errors import LocationError

DOWN_PROJ = "model.layers.{L}.mlp.down_proj.weight"
# The paper's recipe, for what a preset leaves out and for architectures without one.
PAPER_LR = 5e-4
PAPER_BATCH_SIZE = 100
DEFAULT_REPLAY_WEIGHT = 1.0


@dataclass(frozen=True)
class EditLocation:
    template: str
    layers: tuple[int, ...]

    def describe(self) -> str:
        layers = ",".join(map(str, self.layers))
        return self.template.replace("{L}", layers) if "{L}" in self.template else self.template


@dataclass(frozen=True)
class LargeFactSetDefault:
    """A measured setting that replaces the default location and replay weight once a round
    trains on at least `min_facts` facts (the location and the weight are only replaced while
    the config leaves them to the default)."""

    min_facts: int
    layers: tuple[int, ...]
    replay_weight: float


@dataclass(frozen=True)
class Preset:
    """The measured defaults of one architecture and size; what was not measured keeps the
    paper's recipe (no replay: locality-preserving replay is not in the paper)."""

    location: EditLocation | None  # None: the MLP output projection at proportional depth
    lr: float = PAPER_LR
    batch_size: int = PAPER_BATCH_SIZE
    replay_ratio: float = 0.0
    replay_qa_share: float = 0.0
    large_fact_set: LargeFactSetDefault | None = None


PAPER_RECIPE = Preset(location=None)

# (model_type, num_hidden_layers, hidden_size) -> preset. The locations of the 7-8B models are
# the LocFT-BF paper's choices. The embedded SmolLM2-135M's are measured:
# - location: the down_proj of layers 21 and 22 together (at 1,000 ZsRE facts: generalization
#   0.56 against 0.41 for layer 22 alone, locality no worse, converged in 15 epochs instead of
#   25; docs/experiments/quality/README.md). `locft locate` on 30 facts prefers layer 3 for
#   capability (docs/experiments/quality/locate_embedded.md).
# - lr: measured; other models start from the paper's 5e-4.
# - batch size: batch 100 gives 100 facts one step per epoch: too few steps for the small model
#   to learn them in 25 epochs (reliability 0.51 vs 0.98 at batch 32, docs/experiments/engine/).
# - replay (measured on the embedded model only, docs/experiments/quality/; other models get
#   the paper's recipe until someone measures them): a third of the pool is reference
#   question-answer pairs in plain text (edit.replay_qa_share), added on top of one prompt per
#   fact: 1.5 replay rows per fact keep one training-format prompt per fact, as before. At 100
#   facts this halved the ARC-Easy loss the capability gate rejected (-0.9 / -1.4 points against
#   -2.3 / -2.6, same seeds) at the same generalization and locality, for about 35% more time an
#   epoch (docs/experiments/quality/).
# - large fact sets: at 1,000 ZsRE facts, layers 20-22 with the replay weighted 2 against the
#   two-layer default, item by item on two seeds: generalization +0.07 (p 0.02) and +0.05, token
#   locality +0.005 and +0.000, ARC-Easy +1.1 and -0.4 points against the base where two layers
#   lost 1.9 and 1.6. At 100 facts the same setting cost ARC-Easy (-2.8 and -2.1 against -1.1
#   and -0.9), so smaller fact sets keep two layers (docs/experiments/quality/README.md, "A
#   default that grows with the facts").
PRESETS: dict[tuple[str, int, int], Preset] = {
    ("llama", 32, 4096): Preset(EditLocation(DOWN_PROJ, (22,))),  # Llama-3-8B
    ("qwen2", 28, 3584): Preset(EditLocation(DOWN_PROJ, (6,))),  # Qwen2.5-7B
    ("mistral", 32, 4096): Preset(EditLocation("model.layers.{L}", (23,))),  # Mistral-7B: the whole layer
    ("llama", 30, 576): Preset(  # SmolLM2-135M (the embedded model)
        EditLocation(DOWN_PROJ, (21, 22)),
        lr=5e-3,
        batch_size=32,
        replay_ratio=1.5,
        replay_qa_share=1 / 3,
        large_fact_set=LargeFactSetDefault(min_facts=1000, layers=(20, 21, 22), replay_weight=2.0),
    ),
}

# MLP output projections by naming family (Llama/Qwen/Mistral, GPT-2, GPT-NeoX, OPT/BART).
_MLP_OUT = re.compile(
    r"^(?P<prefix>.*?)\.(?P<layer>\d+)\.(?P<suffix>mlp\.down_proj|mlp\.c_proj|mlp\.dense_4h_to_h|fc2|mlp\.fc2)\.weight$"
)
_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def _arch_key(config: Any) -> tuple[str, int, int]:
    return (
        str(getattr(config, "model_type", "")),
        int(getattr(config, "num_hidden_layers", 0) or 0),
        int(getattr(config, "hidden_size", 0) or 0),
    )


def preset(config: Any) -> Preset:
    """The preset of this model's architecture and size (a model config), else the paper's recipe."""
    return PRESETS.get(_arch_key(config), PAPER_RECIPE)


def default_lr(config: Any) -> float:
    return preset(config).lr


def default_batch_size(config: Any) -> int:
    return preset(config).batch_size


def default_replay_ratio(config: Any) -> float:
    return preset(config).replay_ratio


def default_replay_qa_share(config: Any) -> float:
    return preset(config).replay_qa_share


def large_fact_set_default(model: torch.nn.Module, cfg: EditConfig, n_facts: int) -> LargeFactSetDefault | None:
    """The measured large-fact-set setting, when this architecture has one, `n_facts` reaches
    it and the config leaves the location to the default (it was measured with that template)."""
    measured = preset(model.config)
    large = measured.large_fact_set
    if large is None or n_facts < large.min_facts or cfg.layers:
        return None
    default_template = measured.location.template if measured.location is not None else None
    return large if cfg.location in (None, default_template) else None


def choose_edit_location(model: torch.nn.Module, cfg: EditConfig, n_facts: int) -> EditLocation:
    """Where a round over `n_facts` facts trains: the one place the edit location is chosen.

    In order: the config's [edit] location and layers (set by hand, or by `locft locate --write`
    after a measured sweep); for what it leaves out, this architecture's preset (PRESETS), with
    its large-fact-set layers once `n_facts` reaches them; for architectures without a preset,
    the MLP output projection at proportional depth (`default_location`). Rounds, the gates,
    `locft locate` (the current location it compares against) and bench reach it through
    `locft.engine.resolve.resolve_edit_config`, or call it directly.
    """
    if cfg.location is not None and "{L}" not in cfg.location:
        return EditLocation(cfg.location, ())
    if cfg.location is not None and cfg.layers:
        return EditLocation(cfg.location, cfg.layers)
    default = default_location(model)
    large = large_fact_set_default(model, cfg, n_facts)
    return EditLocation(cfg.location or default.template,
                        cfg.layers or (large.layers if large is not None else default.layers))


def default_location(model: torch.nn.Module) -> EditLocation:
    """`choose_edit_location`'s default before the fact count counts: the preset's location
    when this architecture has one; else the MLP output projection at ~69% depth (layer 22 of
    Llama-3-8B's 32, the paper's default, scaled to this model's depth)."""
    measured = preset(model.config).location
    if measured is not None:
        return measured
    mlp_out = mlp_out_projection(model)
    if mlp_out is None:
        raise LocationError(
            f"no default edit location for model_type {_arch_key(model.config)[0]!r}: set [edit] location, e.g. "
            f"one of {', '.join(candidate_templates(model)[:8])}"
        )
    n_layers = max(mlp_out.layers) + 1
    layer = min(n_layers - 1, round(n_layers * 22 / 32))
    return EditLocation(mlp_out.template, (layer,))


def mlp_out_projection(model: torch.nn.Module) -> EditLocation | None:
    """The model's MLP output projection with every layer that has one (of its naming
    families, the one with the most layers), None when it has none: the fallback default
    above, and what `locft locate` sweeps unless told otherwise."""
    families: dict[tuple[str, str], set[int]] = {}
    for name, _ in model.named_parameters():
        m = _MLP_OUT.match(name)
        if m:
            families.setdefault((m["prefix"], m["suffix"]), set()).add(int(m["layer"]))
    if not families:
        return None
    (prefix, suffix), layers = max(families.items(), key=lambda kv: len(kv[1]))
    return EditLocation(f"{prefix}.{{L}}.{suffix}.weight", tuple(sorted(layers)))


def default_replay_weight(model: torch.nn.Module, cfg: EditConfig, n_facts: int) -> float:
    """The replay loss's weight when the config leaves it out: the large-fact-set weight where
    that setting's location applies, else 1."""
    large = large_fact_set_default(model, cfg, n_facts)
    return large.replay_weight if large is not None else DEFAULT_REPLAY_WEIGHT


def candidate_templates(model: torch.nn.Module) -> list[str]:
    """Distinct parameter names with the layer number replaced by {L}: what a template may name."""
    seen: dict[str, None] = {}
    for name, _ in model.named_parameters():
        seen[_LAYER_INDEX.sub(".{L}", name, count=1)] = None
    return list(seen)


def resolve_location(model: torch.nn.Module, location: EditLocation) -> list[str]:
    """Exact parameter names for a location (never substring matching: layers.1 != layers.10)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    concrete = (
        [location.template.replace("{L}", str(layer)) for layer in location.layers]
        if "{L}" in location.template
        else [location.template]
    )
    names: list[str] = []
    for item in concrete:
        if item in params:
            names.append(item)
        elif item and item in modules:
            inside = [f"{item}.{n}" for n, _ in modules[item].named_parameters()]
            if not inside:
                raise LocationError(f"module {item!r} has no parameters to tune")
            names.extend(inside)
        else:
            candidates = candidate_templates(model)
            raise LocationError(
                f"edit location {item!r} matches no parameter or module of this model. "
                f"Parameter templates: {', '.join(candidates[:24])}"
                + (" ..." if len(candidates) > 24 else "")
            )
    if len(set(names)) != len(names):
        raise LocationError(f"edit location {location.describe()!r} names a parameter twice")
    return names


def layer_index(name: str, layer_prefix: str) -> int | None:
    """The layer number of `name` if it lies under `layer_prefix.<n>.`."""
    if not name.startswith(layer_prefix + "."):
        return None
    head = name[len(layer_prefix) + 1 :].split(".", 1)[0]
    return int(head) if head.isdigit() else None
