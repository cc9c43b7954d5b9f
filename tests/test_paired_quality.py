"""bench/paired_quality.py: two runs' per-item records compared item by item (a script, run as one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "paired_quality.py"


def _record(path: Path, generalization: list[int], token: list[float], seed: int = 0) -> Path:
    record: dict[str, Any] = {
        "data": "$LOCFT_BENCH_DATA/zsre_dev.json", "n": 3, "offset": 0, "eval_sample": 4, "config": {"seed": seed},
        "items": {"reliability": [1, 1, 1], "generalization": generalization,
                  "locality_exact": [0, 1, 0, 0], "locality_token": token},
    }
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def _run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_counts_what_moved_each_way(tmp_path: Path) -> None:
    first = _record(tmp_path / "a.json", [1, 1, 0, 0], [1.0, 0.5, 0.75, 1.0])
    second = _record(tmp_path / "b.json", [1, 0, 0, 1], [1.0, 0.25, 1.0, 0.5])
    out = tmp_path / "paired.json"
    done = _run(first, second, Path("--out"), out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["paired"]
    assert (result["generalization"]["lost"], result["generalization"]["gained"]) == (1, 1)
    assert result["reliability"]["difference"] == 0.0
    token = result["locality_token"]  # differences 0, -0.25, +0.25, -0.5
    assert (token["worse"], token["better"], token["difference"]) == (2, 1, -0.125)
    assert token["ci95"][0] < -0.125 < token["ci95"][1]


def test_refuses_records_measured_on_different_items(tmp_path: Path) -> None:
    first = _record(tmp_path / "a.json", [1, 1, 0, 0], [1.0] * 4, seed=0)
    second = _record(tmp_path / "b.json", [1, 1, 0, 0], [1.0] * 4, seed=1)  # another seed draws another sample
    done = _run(first, second)
    assert done.returncode != 0 and "not measured on the same items" in done.stderr
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(first.read_text()).items() if k != "items"}))
    done = _run(old, second)
    assert done.returncode != 0 and "no per-item scores" in done.stderr
