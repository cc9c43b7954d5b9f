from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from locft.cli.main import cli
from locft.config import (
    CONFIG_TEMPLATE,
    SECTIONS,
    EditConfig,
    LocftConfig,
    ServeConfig,
    from_dict,
    load_config,
    tomllib,
)
from locft.config_docs import update_readme
from locft.config_rules import fields_of
from locft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_template_parses_to_defaults(tmp_path: Path) -> None:
    (tmp_path / "locft.toml").write_text(CONFIG_TEMPLATE)
    assert load_config(tmp_path) == LocftConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"edit": {"lrr": 0.1}}, "unknown key"),
        ({"editt": {}}, "unknown key"),
        ({"edit": {"lr": "fast"}}, "must be a number"),
        ({"edit": {"lr": 5.0}}, "edit.lr"),
        ({"edit": {"batch_size": 0}}, "batch_size"),
        ({"edit": {"batch_size": 2.5}}, "integer"),
        ({"edit": {"prompt_format": "xml"}}, "one of"),
        ({"edit": {"layers": [-1]}}, "layers"),
        ({"gates": {"min_reliability": 1.5}}, "min_reliability"),
        ({"gates": {"capability_alpha": 0}}, "capability_alpha"),
        ({"gates": {"capability_test": "t-test"}}, "'paired', 'point'"),
        ({"serve": {"host": "0.0.0.0"}}, "api_token"),
        ({"schedule": {"cron": "every night"}}, "cron"),
    ],
)
def test_bad_config_is_an_error(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(LocftConfig, data)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "locft.toml").write_text("[edit\n")
    with pytest.raises(ConfigError, match="locft.toml"):
        load_config(tmp_path)


def test_values_are_coerced() -> None:
    cfg = from_dict(LocftConfig, {"edit": {"lr": 0.5, "layers": [3, 4], "max_epochs": 3}})
    assert cfg.edit == EditConfig(lr=0.5, layers=(3, 4), max_epochs=3)
    assert isinstance(cfg.edit.layers, tuple)


@pytest.mark.parametrize("written", ['"off"', '"OFF"', '""'])
def test_cron_can_be_turned_off_from_toml(tmp_path: Path, written: str) -> None:
    # TOML has no null, so "off" is how a user without a nightly round writes it
    (tmp_path / "locft.toml").write_text(f"[schedule]\ncron = {written}\nmin_pending_facts = 10\n")
    schedule = load_config(tmp_path).schedule
    assert schedule.cron is None
    assert schedule.min_pending_facts == 10


# --- the schemas are the one source of truth: template, README and validation agree -----------

KEY_LINE = re.compile(r"^# (\w+) = (.*?)(   # an example; unset by default)?$")


def _uncommented(template: str, examples: bool) -> str:
    """The template with every default key line (and, with `examples`, every example) in force."""
    out = []
    for line in template.splitlines():
        m = KEY_LINE.match(line)
        if m and (examples or not m[3]):
            line = f"{m[1]} = {m[2]}"
        out.append(line)
    return "\n".join(out) + "\n"


def test_every_key_written_out_loads_to_exactly_the_defaults(tmp_path: Path) -> None:
    text = _uncommented(CONFIG_TEMPLATE, examples=False)
    assert all(m[3] for m in map(KEY_LINE.match, text.splitlines()) if m)  # only examples stay commented
    (tmp_path / "locft.toml").write_text(text)
    assert load_config(tmp_path) == LocftConfig()
    n_keys = sum(len(fields_of(cls)) for cls in SECTIONS.values())
    assert len(tomllib.loads(text)) == len(SECTIONS)
    assert sum(len(t) for t in tomllib.loads(text).values()) + CONFIG_TEMPLATE.count("unset by default") == n_keys


def test_every_example_is_a_valid_value(tmp_path: Path) -> None:
    (tmp_path / "locft.toml").write_text(_uncommented(CONFIG_TEMPLATE, examples=True))
    cfg = load_config(tmp_path)
    for section, cls in SECTIONS.items():
        for name, info in fields_of(cls).items():
            expected = info.default if info.default is not None else info.examples[0]
            value = getattr(getattr(cfg, section), name)
            assert value == (tuple(expected) if isinstance(expected, list) else expected), f"{section}.{name}"


def test_every_key_has_help_and_the_template_shows_it() -> None:
    for section, cls in SECTIONS.items():
        for name, info in fields_of(cls).items():
            assert info.description and info.description.strip() == info.description, f"{section}.{name}"
            table = CONFIG_TEMPLATE.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
            assert f"\n# {name} = " in "\n" + table, f"{section}.{name}"
            assert info.description.split()[-1] in table, f"{section}.{name}"


def test_the_readme_reference_is_current() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert update_readme(text) == text, "README.md's configuration reference is stale: run " \
                                         "`python -m locft.config_docs README.md`"
    for cls in SECTIONS.values():
        for name in fields_of(cls):
            assert f"| `{name}` |" in text


def test_init_in_a_fresh_home_writes_a_template_that_loads_to_the_defaults(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "fresh"
    monkeypatch.setenv("LOCFT_HOME", str(root))
    result = CliRunner().invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    assert (root / "locft.toml").read_text(encoding="utf-8") == CONFIG_TEMPLATE
    assert load_config(root) == LocftConfig()
    printed = CliRunner().invoke(cli, ["config", "template"])
    assert printed.exit_code == 0 and printed.output == CONFIG_TEMPLATE


def test_a_config_built_in_code_is_validated_like_the_file() -> None:
    # callers copy configs with dataclasses.replace; a bad value is the same ConfigError
    with pytest.raises(ConfigError, match=r"edit.lr must be in \(0, 1\)"):
        dataclasses.replace(EditConfig(), lr=2.0)
    with pytest.raises(ConfigError, match="api_token"):
        dataclasses.replace(ServeConfig(), host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"\[edit\] unknown key\(s\) lrr"):
        EditConfig(lrr=0.1)  # type: ignore[call-arg]
    assert EditConfig(layers=[3, 4]).layers == (3, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"edit": {"max_epochs": True}}, "edit.max_epochs must be an integer, got True"),
        ({"edit": {"lr": "0.5"}}, "edit.lr must be a number, got '0.5'"),
        ({"edit": {"layers": [1, -2]}}, r"edit.layers\[1\] must be >= 0, got -2"),
        ({"edit": {"layers": []}}, "edit.layers must be a non-empty list"),
        ({"edit": 3}, r"\[edit\] must be a table"),
        ({"gates": {"capability_tasks": "arc_easy"}}, "gates.capability_tasks must be a list"),
        ({"serve": {"port": 0}}, r"serve.port must be in \[1, 65535\], got 0"),
        ({"model": {"device": "tpu"}}, "model.device must be auto, cpu, cuda or cuda:N"),
        ({"edit": {"replay_target": "tokens", "replay_qa_share": 0.5}}, "replay_target = 'distribution'"),
    ],
)
def test_messages_name_the_key_and_the_rule(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(LocftConfig, data)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(LocftConfig, {"edit": {"lr": 5.0, "max_epochs": 0, "lrr": 1}, "serve": {"port": -1}})
    message = str(info.value)
    assert message.startswith("[edit] unknown key(s) lrr; known: ")
    for part in ("edit.lr", "edit.max_epochs", "serve.port"):
        assert part in message
