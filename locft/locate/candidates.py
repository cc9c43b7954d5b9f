"""The candidates of a `locft locate` sweep: which locations, and which facts to train them on."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from locft.errors import LocationError
from locft.facts import EditFact

if TYPE_CHECKING:
    import torch

    from locft.engine.targets import EditLocation

log = logging.getLogger(__name__)

# Depths of the default sweep, as fractions of the layer range [0, n-1]: six points from near
# the bottom to near the top (the paper's own picks sit at 21% and 69-72% of depth).
DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{L}"), r"(\d+)") + "$")


def available_layers(model: torch.nn.Module, template: str) -> list[int]:
    """Layer numbers L for which `template` names a parameter or a module of `model`."""
    if "{L}" not in template:
        return []
    pattern = _template_regex(template)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_modules()]
    return sorted({int(m[1]) for n in names if (m := pattern.match(n))})


def mlp_out_template(model: torch.nn.Module) -> str:
    """The template a default sweep varies the layer of: the MLP output projection, found the
    way the default location finds it (locft.engine.targets)."""
    from locft.engine.targets import candidate_templates, mlp_out_projection

    found = mlp_out_projection(model)
    if found is None:
        templates = candidate_templates(model)
        raise LocationError(
            "no MLP output projection found to sweep; name a template with --template, one of: "
            + ", ".join(templates[:16]) + (" ..." if len(templates) > 16 else "")
        )
    return found.template


def spread_layers(layers: Sequence[int], depths: Sequence[float] = DEFAULT_DEPTHS) -> list[int]:
    """Layers at the given fractions of the range (deduplicated, ascending)."""
    ordered = sorted(set(layers))
    if not ordered:
        return []
    picks = {ordered[min(len(ordered) - 1, round(f * (len(ordered) - 1)))] for f in depths}
    return sorted(picks)


def build_candidates(
    model: torch.nn.Module,
    current: EditLocation | None = None,
    templates: Sequence[str] = (),
    layers: Sequence[int] = (),
    depths: Sequence[float] = DEFAULT_DEPTHS,
) -> list[EditLocation]:
    """The sweep's locations, each resolved against the model now (errors before any training).

    templates × layers; no templates: the MLP output projection; no layers: the template's
    layers spread by `depths`. A template without {L} is one candidate. The current location
    joins a default sweep (no --layers) when it is not already in it, so that the report
    compares the pick with what rounds use now.
    """
    from locft.engine.targets import EditLocation, resolve_location

    out: list[EditLocation] = []
    for template in (list(templates) or [mlp_out_template(model)]):
        if "{L}" not in template:
            out.append(EditLocation(template, ()))
            continue
        have = available_layers(model, template)
        if not have:
            raise LocationError(f"template {template!r} names no parameter or module of this model")
        if layers:
            missing = [layer for layer in layers if layer not in have]
            if missing:
                raise LocationError(
                    f"layer(s) {', '.join(map(str, missing))} do not exist for {template!r} "
                    f"(it has layers {have[0]}..{have[-1]})"
                )
            chosen = list(dict.fromkeys(layers))
        else:
            chosen = spread_layers(have, depths)
        out.extend(EditLocation(template, (layer,)) for layer in chosen)
    for loc in out:
        resolve_location(model, loc)  # LocationError now, not after an hour of training
    if current is not None and not layers and current not in out:
        try:
            resolve_location(model, current)
            out.append(current)
        except LocationError as exc:  # a broken [edit] location is what locate is run to fix
            log.warning("the configured location is left out of the sweep: %s", exc)
    return list(dict.fromkeys(out))


def sample_facts(facts: Sequence[EditFact], n: int, seed: int) -> list[EditFact]:
    """All facts, or a seeded sample of `n` (same facts + seed -> same sample, in file order)."""
    if len(facts) <= n:
        return list(facts)
    picked = sorted(random.Random(seed).sample(range(len(facts)), n))
    return [facts[i] for i in picked]
