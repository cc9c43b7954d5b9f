"""contrib/locftd.service: a unit systemd accepts, that runs the daemon the way the README says."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from locft.daemon.service import STOP_BOUND_S

UNIT = Path(__file__).resolve().parents[1] / "contrib" / "locftd.service"
VENV_BIN = "/opt/locft/venv/bin"


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once, e.g. Environment=)."""
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#", ";"),
                                          empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():  # configparser alone would keep only the last of repeated keys
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not KEY=VALUE inside a section: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key, []).append(value)
    parser.read_string(text)  # and it must parse as an INI file at all
    return sections


def test_the_unit_runs_the_daemon_in_the_foreground_with_a_home_and_a_safe_stop() -> None:
    unit = parse(UNIT.read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"] == [f"{VENV_BIN}/locftd start --foreground"]  # systemd supervises it
    assert service["Type"] == ["simple"]
    assert "LOCFT_HOME=/var/lib/locft" in service["Environment"]
    assert service["StateDirectory"] == ["locft"]  # the home, writable under ProtectSystem=strict
    assert service["ExecStartPre"] == [f"{VENV_BIN}/locft init", f"{VENV_BIN}/locft config check"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert int(service["TimeoutStopSec"][0]) > STOP_BOUND_S  # the daemon's own bound, with room
    assert service["RestartPreventExitStatus"] == ["3 10"]  # config_invalid, daemon_error
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that the commands exist: point them at this environment's scripts, and run
    # as root, which exists everywhere (the locft user exists only where the unit is installed)
    text = UNIT.read_text(encoding="utf-8").replace(VENV_BIN, str(Path(sys.executable).parent))
    text = text.replace("User=locft", "User=root").replace("Group=locft", "Group=root")
    unit = tmp_path / "locftd.service"
    unit.write_text(text, encoding="utf-8")
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # a misspelt key or value is only a warning (exit 0): any line about the unit fails the test
    about_unit = [line for line in (out.stdout + out.stderr).splitlines() if "locftd.service" in line]
    assert out.returncode == 0 and about_unit == [], out.stdout + out.stderr
