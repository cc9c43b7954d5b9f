from __future__ import annotations

from pathlib import Path

import pytest

from locft.config import CONFIG_TEMPLATE, EditConfig, LocftConfig, from_dict, load_config
from locft.errors import ConfigError


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
