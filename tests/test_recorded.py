"""Benchmark records name benchmark files by $LOCFT_BENCH_DATA, never by the machine's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from locft.errors import ConfigError
from locft.recorded import expand_recorded_path, recorded_command, recorded_path


@pytest.fixture
def bench_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "zsre_dev.json").write_text("[]")
    monkeypatch.setenv("LOCFT_BENCH_DATA", str(data))
    return data


def test_a_file_under_the_data_directory_is_named_by_the_variable(bench_data: Path, tmp_path: Path) -> None:
    assert recorded_path(bench_data / "zsre_dev.json") == "$LOCFT_BENCH_DATA/zsre_dev.json"
    assert recorded_path(bench_data) == "$LOCFT_BENCH_DATA"
    outside = tmp_path / "mine.jsonl"
    assert recorded_path(outside) == str(outside)


def test_without_the_variable_a_path_stays_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCFT_BENCH_DATA", raising=False)
    assert recorded_path("../elsewhere/zsre_dev.json") == "../elsewhere/zsre_dev.json"


def test_the_command_names_data_files_by_the_variable(bench_data: Path) -> None:
    data = str(bench_data / "zsre_dev.json")
    assert (recorded_command(["/venv/bin/locft", "bench", "--data", data, "--n", "10"])
            == "locft bench --data $LOCFT_BENCH_DATA/zsre_dev.json --n 10")
    assert (recorded_command(["/repo/locft/cli/main.py", "bench", f"--data={data}"])
            == "locft bench --data=$LOCFT_BENCH_DATA/zsre_dev.json")
    assert (recorded_command(["bench/scale.py", "--data-dir", str(bench_data), "--out", "/not/there.json"])
            == "python bench/scale.py --data-dir $LOCFT_BENCH_DATA --out /not/there.json")


def test_a_recorded_path_reads_back_with_the_readers_own_directory(bench_data: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert expand_recorded_path("$LOCFT_BENCH_DATA/zsre_dev.json") == bench_data / "zsre_dev.json"
    assert expand_recorded_path("examples/facts.jsonl") == Path("examples/facts.jsonl")
    monkeypatch.delenv("LOCFT_BENCH_DATA")
    with pytest.raises(ConfigError, match="set LOCFT_BENCH_DATA"):
        expand_recorded_path("$LOCFT_BENCH_DATA/zsre_dev.json")
