from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from locft.config import EditConfig
from locft.engine.targets import (
    DOWN_PROJ,
    EditLocation,
    candidate_templates,
    choose_edit_location,
    default_batch_size,
    default_location,
    default_lr,
    default_replay_qa_share,
    default_replay_ratio,
    default_replay_weight,
    large_fact_set_default,
    resolve_location,
)
from locft.errors import LocationError


@pytest.fixture(scope="module")
def twelve_layers() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=12,
                      num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(cfg)


def test_exact_names_never_substrings(twelve_layers: LlamaForCausalLM) -> None:
    names = resolve_location(twelve_layers, EditLocation("model.layers.{L}.mlp.down_proj.weight", (1,)))
    assert names == ["model.layers.1.mlp.down_proj.weight"]  # not layers.10 / layers.11


def test_several_layers(twelve_layers: LlamaForCausalLM) -> None:
    names = resolve_location(twelve_layers, EditLocation("model.layers.{L}.mlp.down_proj.weight", (1, 10)))
    assert names == ["model.layers.1.mlp.down_proj.weight", "model.layers.10.mlp.down_proj.weight"]


def test_module_template_selects_the_whole_layer(twelve_layers: LlamaForCausalLM) -> None:
    names = resolve_location(twelve_layers, EditLocation("model.layers.{L}", (1,)))
    expected = sorted(n for n, _ in twelve_layers.named_parameters() if n.startswith("model.layers.1."))
    assert sorted(names) == expected
    assert not any(n.startswith("model.layers.10.") for n in names)


def test_wrong_template_lists_candidates(twelve_layers: LlamaForCausalLM) -> None:
    with pytest.raises(LocationError) as err:
        resolve_location(twelve_layers, EditLocation("model.layers.{L}.mlp.down.weight", (1,)))
    assert "model.layers.{L}.mlp.down_proj.weight" in str(err.value)


def test_layer_out_of_range_is_an_error(twelve_layers: LlamaForCausalLM) -> None:
    with pytest.raises(LocationError):
        resolve_location(twelve_layers, EditLocation("model.layers.{L}.mlp.down_proj.weight", (12,)))


def test_default_is_proportional_depth_for_unknown_sizes(twelve_layers: LlamaForCausalLM) -> None:
    loc = default_location(twelve_layers)
    assert loc.template == "model.layers.{L}.mlp.down_proj.weight"
    assert loc.layers == (round(12 * 22 / 32),)


def test_paper_default_read_from_config_not_name() -> None:
    cfg = LlamaConfig(vocab_size=8, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      intermediate_size=8)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert default_location(model) == EditLocation("model.layers.{L}.mlp.down_proj.weight", (22,))


def test_config_overrides_layers(twelve_layers: LlamaForCausalLM) -> None:
    loc = choose_edit_location(twelve_layers, EditConfig(layers=(3,)), 10)
    assert resolve_location(twelve_layers, loc) == ["model.layers.3.mlp.down_proj.weight"]


def test_candidate_templates_are_deduplicated(twelve_layers: LlamaForCausalLM) -> None:
    templates = candidate_templates(twelve_layers)
    assert templates.count("model.layers.{L}.mlp.down_proj.weight") == 1
    assert "model.embed_tokens.weight" in templates


def _embedded_shape() -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=8, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, intermediate_size=8)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def test_embedded_default_tunes_two_down_projections() -> None:
    # SmolLM2-135M's measured default (docs/experiments/quality/README.md, levers at N=1000)
    model = _embedded_shape()
    location = default_location(model)
    assert location == EditLocation("model.layers.{L}.mlp.down_proj.weight", (21, 22))
    assert resolve_location(model, location) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (21, 22)]


def test_embedded_default_adds_a_third_layer_and_weights_replay_from_1000_facts() -> None:
    # measured: docs/experiments/quality/README.md, "A default that grows with the facts"
    model = _embedded_shape()
    small, large = (21, 22), (20, 21, 22)
    assert choose_edit_location(model, EditConfig(), 999) == EditLocation(DOWN_PROJ, small)
    assert default_replay_weight(model, EditConfig(), 999) == 1.0
    assert choose_edit_location(model, EditConfig(), 1000) == EditLocation(DOWN_PROJ, large)
    assert default_replay_weight(model, EditConfig(), 1000) == 2.0
    # the default template named explicitly is still the default location
    assert choose_edit_location(model, EditConfig(location=DOWN_PROJ), 5000) == EditLocation(DOWN_PROJ, large)


def test_configured_layers_or_template_keep_the_large_fact_set_setting_out() -> None:
    model = _embedded_shape()
    two_layers = EditConfig(layers=(21, 22))
    assert choose_edit_location(model, two_layers, 1000) == EditLocation(DOWN_PROJ, (21, 22))
    assert default_replay_weight(model, two_layers, 1000) == 1.0
    # another template was never measured with the third layer: the small-set layers
    o_proj = EditConfig(location="model.layers.{L}.self_attn.o_proj.weight")
    assert choose_edit_location(model, o_proj, 1000).layers == (21, 22)
    assert default_replay_weight(model, o_proj, 1000) == 1.0
    # layers chosen by hand keep the weight at 1 (as the commands that measured them ran)
    assert default_replay_weight(model, EditConfig(layers=(20, 21, 22)), 1000) == 1.0


def test_unmeasured_models_have_no_large_fact_set_setting(twelve_layers: LlamaForCausalLM) -> None:
    assert choose_edit_location(twelve_layers, EditConfig(), 100_000) == default_location(twelve_layers)
    assert default_replay_weight(twelve_layers, EditConfig(), 100_000) == 1.0


# Today's per-architecture presets, pinned value by value: (model_type, layers, hidden) ->
# (template, layers, lr, batch size, replay ratio, replay qa share, large-fact-set setting as
# (min facts, layers, replay weight) or None). A changed preset must change this table too.
PINNED_PRESETS = {
    ("llama", 32, 4096): (DOWN_PROJ, (22,), 5e-4, 100, 0.0, 0.0, None),  # Llama-3-8B
    ("qwen2", 28, 3584): (DOWN_PROJ, (6,), 5e-4, 100, 0.0, 0.0, None),  # Qwen2.5-7B
    ("mistral", 32, 4096): ("model.layers.{L}", (23,), 5e-4, 100, 0.0, 0.0, None),  # Mistral-7B
    ("llama", 30, 576): (DOWN_PROJ, (21, 22), 5e-3, 32, 1.5, 1 / 3, (1000, (20, 21, 22), 2.0)),  # SmolLM2-135M
}


def _shaped(model_type: str, layers: int, hidden: int) -> SimpleNamespace:
    """What the preset lookups read of a model: its config (no weights)."""
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type, num_hidden_layers=layers, hidden_size=hidden))


@pytest.mark.parametrize("key", list(PINNED_PRESETS))
def test_presets_keep_their_values(key: tuple[str, int, int]) -> None:
    template, layers, lr, batch, ratio, qa, large = PINNED_PRESETS[key]
    model = _shaped(*key)
    assert default_location(model) == EditLocation(template, layers)  # type: ignore[arg-type]
    assert default_lr(model.config) == lr and default_batch_size(model.config) == batch
    assert default_replay_ratio(model.config) == ratio and default_replay_qa_share(model.config) == qa
    few = large[0] - 1 if large else 100_000
    assert choose_edit_location(model, EditConfig(), few) == EditLocation(template, layers)  # type: ignore[arg-type]
    assert default_replay_weight(model, EditConfig(), few) == 1.0  # type: ignore[arg-type]
    if large is None:
        assert large_fact_set_default(model, EditConfig(), 10**9) is None  # type: ignore[arg-type]
        return
    min_facts, large_layers, weight = large
    setting = large_fact_set_default(model, EditConfig(), min_facts)  # type: ignore[arg-type]
    assert setting is not None and (setting.min_facts, setting.layers, setting.replay_weight) == large
    assert choose_edit_location(model, EditConfig(), min_facts) == EditLocation(template, large_layers)  # type: ignore[arg-type]
    assert default_replay_weight(model, EditConfig(), min_facts) == weight  # type: ignore[arg-type]


def test_unmeasured_architectures_get_the_paper_recipe() -> None:
    model = _shaped("gpt2", 12, 768)
    assert default_lr(model.config) == 5e-4 and default_batch_size(model.config) == 100
    assert default_replay_ratio(model.config) == 0.0 and default_replay_qa_share(model.config) == 0.0
    assert large_fact_set_default(model, EditConfig(), 10**9) is None  # type: ignore[arg-type]
    assert default_replay_weight(model, EditConfig(), 10**9) == 1.0  # type: ignore[arg-type]
