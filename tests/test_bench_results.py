"""bench/: the table of current records is not stale, records are named by date and commit, the
suite's presets are `locft bench` options, and no bench script reaches into private engine names."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their siblings, as when run from bench/


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


results_table = _load("results_table")
run = _load("run")


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (BENCH / "results" / "README.md").read_text()
    assert results_table.with_table(readme, results_table.render()) == readme, (
        "bench/results/README.md is stale: run python bench/results_table.py")


def _bench_record(**extra: object) -> dict:
    metrics = {"reliability": 0.9, "generalization": 0.5, "locality_exact": 0.99, "locality_token": 0.995}
    return {"n": 10, "eval_sample": None, "metrics": metrics, "metrics_unscoped": {**metrics, "locality_exact": 0.0},
            "scope_mode": "gated", "scope_subjects": "given", "scope": {"match": "subject"},
            "config": {"layers": [21, 22], "replay_ratio": 0.0}, "training": {"epochs": 7},
            "command": "/x/locft/cli/main.py bench --data /somewhere/zsre_dev.json --n 10", **extra}


def test_a_record_row_comes_from_its_name_and_contents(tmp_path: Path) -> None:
    (tmp_path / "scope").mkdir()
    (tmp_path / "scope" / "zsre_n10_2026-01-02_abc1234.json").write_text(json.dumps(_bench_record()))
    table = results_table.render(tmp_path)
    row = table.splitlines()[2]
    assert "| zsre_n10 |" in row and "| 2026-01-02 | `abc1234` |" in row
    assert "exact loc 0.990 (0.000)" in row and "layers 21,22" in row and "7 epochs" in row
    assert "`locft bench --data $LOCFT_BENCH_DATA/zsre_dev.json --n 10`" in row
    assert "(scope/zsre_n10_2026-01-02_abc1234.json)" in row


def test_a_record_without_date_and_commit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zsre_n10_today.json").write_text(json.dumps(_bench_record()))
    with pytest.raises(results_table.RecordError, match="named by date and commit"):
        results_table.records(tmp_path)


def test_check_fails_on_a_stale_table(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(f"# x\n{results_table.BEGIN}\n{results_table.END}\n")
    (tmp_path / "zsre_n10_2026-01-02_abc1234.json").write_text(json.dumps(_bench_record()))
    assert results_table.main(["--check", "--results", str(tmp_path)]) == 1
    assert results_table.main(["--results", str(tmp_path)]) == 0
    assert results_table.main(["--check", "--results", str(tmp_path)]) == 0


def test_every_preset_option_is_a_locft_bench_option() -> None:
    from locft.cli.bench import bench

    known = {opt for param in bench.params for opt in param.opts}
    suite = run.load_suite()
    assert {"zsre-1000", "counterfact-1000", "wikibigedit-1000"} <= set(suite)
    for preset in suite.values():
        args = preset.bench_args(Path("DATA") / "file.json")
        flags = {a for a in args if a.startswith("--")}
        assert flags <= known, f"{preset.name}: {flags - known}"
        assert "../" not in (preset.data or preset.repo_data or "")
        if preset.repo_data:
            assert (BENCH.parent / preset.repo_data).exists()


def test_the_runner_names_the_record_and_needs_a_data_directory(tmp_path: Path, monkeypatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(run.BENCH_DATA_VAR, raising=False)
    with pytest.raises(SystemExit, match="LOCFT_BENCH_DATA"):
        run.main(["zsre-1000", "--dry-run"])
    assert run.main(["zsre-1000", "--dry-run", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert f"--data {tmp_path}/zsre_dev.json --n 1000 --eval-sample 200" in line
    assert re.search(rf"--out {tmp_path}/scope/zsre_n1000_\d{{4}}-\d\d-\d\d_[0-9a-f]{{7,}}\.json$", line)


def _private_uses(text: str) -> list[str]:
    """Private locft names a script reaches: `_`-prefixed imports or attributes of locft modules
    (under any alias), and the caller's frame."""
    aliases = {"locft"} | set(re.findall(r"import locft[\w.]* as (\w+)", text))
    aliases |= set(re.findall(r"from locft[\w.]* import (?:[\w, ]*, )?(\w+)", text))
    hits = re.findall(r"_getframe|from locft[\w.]* import [^\n]*\b_\w+", text)
    for alias in aliases:
        hits += re.findall(rf"\b{alias}(?:\.\w+)*\._[A-Za-z]\w*", text)
    return hits


def test_the_private_name_check_finds_what_it_looks_for() -> None:
    patched = "import locft.engine.train as train\ntrain._accumulate_gradients = watched(train._accumulate_gradients)"
    assert "train._accumulate_gradients" in _private_uses(patched)
    assert _private_uses("from locft.engine.train import _Forward") != []
    assert _private_uses("sys._getframe(1)") == ["_getframe"]
    assert _private_uses("from locft.engine import train\ntrain.edit(x)") == []


def test_no_bench_script_reaches_into_private_engine_names() -> None:
    for script in sorted(BENCH.glob("*.py")):
        hits = _private_uses(script.read_text())
        assert not hits, f"{script.name}: {hits}"
