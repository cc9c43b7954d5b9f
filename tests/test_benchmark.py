"""`locft bench` as a library call and as a command, on the tiny model (numbers are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from locft.benchmark import BenchSpec, run_benchmark
from locft.cli.main import cli
from locft.config import EditConfig, ModelConfig
from locft.home import Home


def _facts_file(tmp_path: Path, n: int = 6) -> Path:
    rows = [
        {"prompt": f"The mascot of team {i} is", "target": f"bird {i}",
         "paraphrases": [f"Team {i} has as its mascot"], "locality": [{"prompt": f"The colour of sky {i} is"}]}
        for i in range(n)
    ]
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_benchmark_samples_generalization_and_locality_but_not_reliability(
    tiny_model_dir: Path, home: Home, tmp_path: Path
) -> None:
    spec = BenchSpec(data=_facts_file(tmp_path), n=6, edit=EditConfig(max_epochs=2, prompt_format="raw"),
                     model=ModelConfig(path=str(tiny_model_dir)), home=home.root, eval_sample=2)
    record = run_benchmark(spec)
    metrics = record["metrics"]
    assert metrics["n_facts"] == 6  # reliability over every fact
    assert metrics["n_paraphrases"] == 2 and metrics["n_probes"] == 2  # the sample's
    assert record["eval_sample"] == 2 and len(record["training"]["loss_per_epoch"]) <= 2
    assert 0.0 <= metrics["reliability"] <= 1.0
    peaks = list(record["peak_memory_bytes_after"].values())  # a high-water mark per phase, in order
    assert list(record["peak_memory_bytes_after"]) == ["load_and_base_answers", "replay_pool", "train", "evaluate"]
    assert 0 < peaks[0] and peaks == sorted(peaks) and peaks[-1] <= record["peak_memory_bytes"]
    items = record["items"]  # every item's score, so that two runs can be compared item by item
    assert [len(items[k]) for k in ("reliability", "generalization", "locality_exact",
                                    "locality_token")] == [6, 2, 2, 2]
    for key, scores in items.items():
        assert sum(scores) / len(scores) == pytest.approx(metrics[key], abs=1e-4)
    json.dumps(record)  # the record is what --out writes

    everything = run_benchmark(BenchSpec(**{**spec.__dict__, "eval_sample": None}))
    assert everything["metrics"]["n_paraphrases"] == 6 and everything["eval_sample"] is None


def test_bench_command_writes_the_record(tiny_model_dir: Path, home: Home, tmp_path: Path) -> None:
    (home.root / "locft.toml").write_text(f'[model]\npath = "{tiny_model_dir}"\n', encoding="utf-8")
    out = tmp_path / "results" / "r.json"
    result = CliRunner().invoke(cli, ["bench", "--data", str(_facts_file(tmp_path)), "--n", "4", "--epochs", "1",
                                       "--prompt-format", "raw", "--eval-sample", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["n"] == 4 and record["metrics"]["n_paraphrases"] == 3
    assert "reliability" in result.output


def test_bench_set_changes_any_edit_key_and_refuses_unknown_ones(tiny_model_dir: Path, home: Home,
                                                                  tmp_path: Path) -> None:
    (home.root / "locft.toml").write_text(f'[model]\npath = "{tiny_model_dir}"\n', encoding="utf-8")
    out = tmp_path / "r.json"
    args = ["bench", "--data", str(_facts_file(tmp_path)), "--n", "4", "--epochs", "1", "--prompt-format", "raw",
            "--eval-sample", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--set", "max_new_tokens=7", "--set", "compute_dtype=float32",
                                      "--set", "skip_loss = 0.5"])
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text(encoding="utf-8"))["config"]
    assert (config["max_new_tokens"], config["compute_dtype"], config["skip_loss"]) == (7, "float32", 0.5)
    for bad, message in (("replay_pool_sise=10", "unknown key"), ("max_epochs=many", "integer"), ("lr", "KEY=VALUE")):
        refused = CliRunner().invoke(cli, [*args, "--set", bad])
        assert refused.exit_code != 0 and message in refused.output, refused.output


def test_bench_scores_capability_of_base_and_edited_model(tiny_model_dir: Path, home: Home, tmp_path: Path) -> None:
    (home.root / "locft.toml").write_text(f'[model]\npath = "{tiny_model_dir}"\n', encoding="utf-8")
    out = tmp_path / "r.json"
    args = ["bench", "--data", str(_facts_file(tmp_path)), "--n", "4", "--epochs", "1", "--prompt-format", "raw",
            "--eval-sample", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--capability", "arc_easy", "--capability-limit", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))
    capability = record["capability"]
    assert capability["tasks"] == ["arc_easy"] and capability["limit"] == 3
    base, edited = capability["base"]["arc_easy"], capability["edited"]["arc_easy"]
    assert capability["difference"]["arc_easy"] == round(edited - base, 4)
    pair = capability["paired"]["arc_easy"]  # what the paired gate tests, item by item
    assert pair["n_items"] == 3 and (pair["lost"] - pair["gained"]) / 3 == pytest.approx(base - edited)
    assert f"{pair['lost']} lost, {pair['gained']} gained of 3" in result.output
    assert "arc_easy (base -> edited)" in result.output and "- training on 4 facts" in result.output
    assert list(record["peak_memory_bytes_after"])[-1] == "capability" and record["seconds"]["capability"] > 0
    assert list((home.root / "cache" / "capability-base").iterdir())  # the base's scores are cached

    without = CliRunner().invoke(cli, args)
    assert without.exit_code == 0 and json.loads(out.read_text(encoding="utf-8"))["capability"] is None


def test_bench_refuses_an_unknown_capability_task_before_training(tiny_model_dir: Path, home: Home,
                                                                    tmp_path: Path) -> None:
    (home.root / "locft.toml").write_text(f'[model]\npath = "{tiny_model_dir}"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["bench", "--data", str(_facts_file(tmp_path)), "--n", "4",
                                      "--capability", "arc_eezy"])
    assert result.exit_code != 0 and "arc_eezy" in result.output and "arc_easy" in result.output
    assert "training" not in result.output


def test_bench_keeps_the_trained_tensors_as_a_snapshot(tiny_model_dir: Path, home: Home, tmp_path: Path) -> None:
    from locft.engine.snapshot import load_snapshot

    (home.root / "locft.toml").write_text(f'[model]\npath = "{tiny_model_dir}"\n', encoding="utf-8")
    out, kept = tmp_path / "r.json", tmp_path / "snaps" / "lever-a"
    args = ["bench", "--data", str(_facts_file(tmp_path)), "--n", "4", "--epochs", "1", "--prompt-format", "raw",
            "--eval-sample", "2", "--out", str(out), "--save-snapshot", str(kept)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))
    snapshot = load_snapshot(kept)  # verified against its manifest's hashes
    assert record["snapshot"] == str(kept) and sorted(snapshot.tensors) == record["training"]["parameters"]
    assert snapshot.manifest["bench"]["n"] == 4
    assert snapshot.manifest["base_fingerprint"] == record["model"]["fingerprint"]
    # a second run never overwrites it, and says so before any training
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "already exists" in again.output and "training" not in again.output
