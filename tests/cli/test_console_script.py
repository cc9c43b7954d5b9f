"""Real processes: the installed `locft` console script, and what the fast commands import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from locft.errors import InputFormatError, InvalidFactError, error_code
from locft.home import Home

HEAVY = ("torch", "transformers", "safetensors", "accelerate", "lm_eval", "datasets")


def console_script() -> Path:
    path = Path(sys.executable).with_name("locft")
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package (pip install -e .) so that the console script exists")
    return path


def locft(home: Home, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LOCFT_HOME": str(home.root)}
    return subprocess.run([console_script(), *args], env=env, capture_output=True, timeout=60)


def test_console_script_end_to_end(home: Home, tmp_path: Path) -> None:
    assert locft(home, "init").returncode == 0
    # (how fast add-fact answers is measured in docs/experiments/import_zsre.md, not asserted here)
    for i in range(3):
        done = locft(home, "add-fact", f"Question {i}?", f"Answer {i}")
        assert done.returncode == 0 and done.stdout.decode().strip() == f"added fact {i + 1}", done.stderr

    listed = json.loads(locft(home, "facts", "list", "--json").stdout)
    assert [f["fact_id"] for f in listed] == [3, 2, 1]

    # an argument that is not UTF-8 (a Latin-1 terminal): one line, an invalid fact's status, nothing written
    bad = locft(home, "add-fact", b"Caf\xe9?", "A")
    assert bad.returncode == error_code(InvalidFactError)[1] and b"Traceback" not in bad.stderr
    assert bad.stderr.decode().strip().splitlines() == ["error: prompt is not valid UTF-8 (lone surrogate '\\udce9')"]
    missing = locft(home, "import", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == error_code(InputFormatError)[1]
    assert missing.stderr.decode().startswith("error: ") and b"Traceback" not in missing.stderr
    status = json.loads(locft(home, "status", "--json").stdout)
    assert status["facts"]["active"] == 3


CHECK_IMPORTS = textwrap.dedent(
    """
    import json, sys
    from locft.cli.main import cli

    for args in json.loads(sys.argv[1]):
        try:
            cli(args, prog_name="locft", standalone_mode=False)
        except SystemExit:
            pass
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))))
    """
)


def test_help_add_fact_and_facts_never_import_torch(home: Home) -> None:
    commands = [
        ["init"], ["--help"], ["add-fact", "--help"], ["add-fact", "Q?", "A"], ["facts", "--help"],
        ["facts", "list"], ["facts", "list", "--pending", "--json"], ["facts", "show", "1"],
        ["facts", "edit", "1", "--answer", "B"], ["facts", "retract", "1"], ["status"], ["versions", "list"],
    ]
    env = {**os.environ, "LOCFT_HOME": str(home.root)}
    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, json.dumps(commands), json.dumps(HEAVY)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "added fact 1" in done.stdout and "retracted fact 1" in done.stdout  # the commands really ran
    assert json.loads(lines[-1]) == []
