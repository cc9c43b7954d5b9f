"""Config resolution: a resolved config resolves to itself (a round resolves once and trains with it)."""

from __future__ import annotations

import pytest

from locft.config import EditConfig
from locft.engine import targets
from locft.engine.model_io import LoadedModel
from locft.engine.resolve import resolve_edit, resolve_edit_config

CONFIGS = [
    EditConfig(),
    EditConfig(prompt_format="raw", layers=(1, 3), replay_ratio=0.5, replay_target="tokens"),
    EditConfig(location="model.layers.{L}", layers=(2,), compute_dtype="float32", forward_mode="reference"),
    EditConfig(location="model.layers.3.mlp.down_proj.weight", micro_batch_size=4),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_resolving_twice_changes_nothing(tiny: LoadedModel, cfg: EditConfig) -> None:
    once = resolve_edit_config(tiny, cfg, 10)
    assert resolve_edit_config(tiny, once, 10) == once
    both = resolve_edit(tiny, cfg, 10)
    assert both.config == once
    again = resolve_edit(tiny, once, 10)
    assert (again.location, again.names) == (both.location, both.names)


def test_a_large_fact_set_setting_resolves_once(tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    large = targets.LargeFactSetDefault(min_facts=4, layers=(2, 3), replay_weight=2.0)
    monkeypatch.setitem(targets.PRESETS, targets._arch_key(tiny.config),
                        targets.Preset(targets.EditLocation(targets.DOWN_PROJ, (3,)), large_fact_set=large))
    once = resolve_edit(tiny, EditConfig(), 4)
    assert once.config.layers == (2, 3) and once.config.replay_weight == 2.0
    assert once.names == ["model.layers.2.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    assert resolve_edit_config(tiny, once.config, 4) == once.config
