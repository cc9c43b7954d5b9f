"""`locft locate` through click's runner on the tiny model: table, pick, and locft.toml after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from locft.cli.main import cli
from locft.config import load_config
from locft.engine.model_io import load_base
from locft.engine.targets import DOWN_PROJ, EditLocation, choose_edit_location
from locft.errors import ConfigError, InputFormatError, LocationError, error_code
from locft.facts import EditFact, Probe
from locft.home import Home
from locft.store import Store
from tests.round_helpers import FACTS, make_home

# Fast: no lm-eval (its own tests cover it), 8 probes, 30 epochs (the tiny model learns FACTS).
FAST = ["--capability-tasks", "", "--probes", "8", "--epochs", "30", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    h = make_home(tmp_path / "home", tiny_model_dir)
    monkeypatch.setenv("LOCFT_HOME", str(h.root))
    return h


@pytest.fixture
def facts_file(tmp_path: Path) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a, "paraphrases": [f"{p[:-3]}:"]}) + "\n"
                            for p, a in FACTS), encoding="utf-8")
    return path


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, ["locate", *args])
    assert result.exit_code == code, result.output + str(result.exception)
    return result


def error_line(result: Result) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_write_records_the_pick_and_a_later_config_load_resolves_to_it(home: Home, facts_file: Path,
                                                                      tiny_model_dir: Path) -> None:
    before = home.config_path.read_text()
    result = run("--facts", str(facts_file), "--layers", "1,3", "--write", *FAST)
    out = result.stdout
    assert "model.layers.1.mlp.down_proj.weight" in out and "model.layers.3.mlp.down_proj.weight" in out
    assert "priority (the paper's):\n  reliability: best" in out
    why = dict(line.split(None, 1) for line in out.split("\nwhy:\n")[1].splitlines()[:2])
    assert set(why) == {f"model.layers.{L}.mlp.down_proj.weight" for L in (1, 3)}
    chosen = next(line for line in out.splitlines() if line.startswith("chosen: "))
    layer = int(chosen.split("model.layers.")[1].split(".")[0])
    assert layer in (1, 3) and why[f"model.layers.{layer}.mlp.down_proj.weight"] == "chosen"
    assert why[f"model.layers.{4 - layer}.mlp.down_proj.weight"] != "chosen"
    assert "recorded in" in out
    cfg = load_config(home.root)
    assert cfg.edit.location == DOWN_PROJ and cfg.edit.layers == (layer,)
    # the rest of the file is as it was; the note says what was measured
    text = home.config_path.read_text()
    assert [line for line in before.splitlines() if line not in text.splitlines()] == []
    assert "# locft locate: " in text and "4 facts x 30 epochs" in text
    loaded = load_base(cfg.model, home.root)
    assert choose_edit_location(loaded.model, cfg.edit, 10) == EditLocation(DOWN_PROJ, (layer,))


def test_no_write_only_prints_the_lines_to_paste(home: Home, facts_file: Path, tmp_path: Path) -> None:
    before = home.config_path.read_bytes()
    out_file = tmp_path / "report.json"
    result = run("--facts", str(facts_file), "--layers", "2", "--no-write", "--out", str(out_file), *FAST)
    assert "not written. To use it, put in [edit]" in result.stdout
    assert 'location = "model.layers.{L}.mlp.down_proj.weight"\n  layers = [2]' in result.stdout
    assert "only one candidate" in result.stderr
    assert home.config_path.read_bytes() == before
    data = json.loads(out_file.read_text())
    assert data["winner_layers"] == [2] and len(data["candidates"]) == 1
    # not a terminal and neither flag: print, never write (and never wait for an answer)
    result = run("--facts", str(facts_file), "--layers", "2", *FAST)
    assert "not written" in result.stdout and home.config_path.read_bytes() == before


def test_json_and_the_store_as_the_fact_source(home: Home) -> None:
    with Store.open(home) as store:
        for p, a in FACTS:
            store.add_fact(EditFact(p, a, probes=(Probe("The first month of the year is"),)))
    result = run("--layers", "1,2", "--sample", "3", "--json", "--no-write", *FAST)
    data = json.loads(result.stdout)
    assert data["n_facts"] == 4 and data["n_sample"] == 3 and data["n_probes"] == 9
    assert [c["layers"] for c in data["candidates"]] == [[1], [2]]
    assert all(c["capability_drop"] is None and c["locality"] is not None for c in data["candidates"])
    assert all(c["locality_exact"] is None for c in data["candidates"])  # only with --exact-locality
    assert data["edit"]["batch_size"] == 1  # 3 facts: >= 4 steps per epoch
    assert data["selection"]["status"][data["selection"]["winner"]] == "chosen"
    assert "chosen: " in result.stderr  # stdout stays pure JSON


def test_a_sweep_that_learned_nothing_is_not_recorded(home: Home, facts_file: Path) -> None:
    before = home.config_path.read_bytes()
    result = run("--facts", str(facts_file), "--layers", "1", "--write", *FAST[:4], "--epochs", "1", code=1)
    assert "not recorded: the chosen location learned only" in error_line(result)
    assert home.config_path.read_bytes() == before


def test_clear_errors(home: Home, facts_file: Path, tmp_path: Path) -> None:
    assert "no active facts" in error_line(run("--layers", "1", *FAST, code=1))
    assert "no such file" in error_line(run("--facts", str(tmp_path / "nope.jsonl"), *FAST,
                                            code=error_code(InputFormatError)[1]))
    assert "layer(s) 9 do not exist" in error_line(run("--facts", str(facts_file), "--layers", "1,9", *FAST,
                                                       code=error_code(LocationError)[1]))
    assert "unknown capability task 'arc_eazy'" in error_line(
        run("--facts", str(facts_file), "--capability-tasks", "arc_eazy", code=error_code(ConfigError)[1]))
    bad = run("--facts", str(facts_file), "--layers", "one,two", code=2)
    assert "comma-separated layer numbers" in bad.output


def test_without_a_store_it_says_how_to_give_facts(tmp_path: Path, tiny_model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bare"
    monkeypatch.setenv("LOCFT_HOME", str(root))
    result = run(code=1)
    assert "pass --facts FILE" in error_line(result)


def test_help_teaches_the_priority() -> None:
    text = CliRunner().invoke(cli, ["locate", "--help"]).output
    for words in ("capability", "locality", "generalization", "--write", "--layers", "Examples"):
        assert words in text
    assert "locate" in CliRunner().invoke(cli, ["--help"]).output
