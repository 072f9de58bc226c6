"""Configuration file errors name the file, the line and the key, and suggest the key meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.protocols.config import ConfigFileError, config_from_dict, load_config, toml_line
from shoal.protocols.errors import ValidationError


def error_for(tmp_path: Path, body: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(body)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert isinstance(info.value, ValidationError)  # still "bad input" to every caller
    return str(info.value).replace(str(path), "shoal.toml")


def test_unknown_top_level_key_names_file_line_and_close_match(tmp_path: Path) -> None:
    message = error_for(tmp_path, "# tuning\n[scalling]\nmax_workers = 2\n")
    assert message == "shoal.toml:2: scalling: unknown key (did you mean 'scaling'?)"
    assert "SwarmConfig" not in message


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    message = error_for(tmp_path, "[scaling]\nmin_workers = 1\nmax_workrs = 2\n")
    assert message == "shoal.toml:3: scaling.max_workrs: unknown key (did you mean 'max_workers'?)"


def test_wrong_type_names_file_and_line(tmp_path: Path) -> None:
    message = error_for(tmp_path, '[gateway]\nport = 1\n\n[scaling]\nmax_workers = "four"\n')
    assert message == "shoal.toml:5: scaling.max_workers: expected an integer, got str 'four'"


def test_errors_in_arrays_of_tables_and_maps(tmp_path: Path) -> None:
    rules = '[[alerts.rules]]\nkind = "task_dead"\n[[alerts.rules]]\nkind = "nope"\n'
    message = error_for(tmp_path, rules)
    assert message.startswith("shoal.toml:4: alerts.rules[1].kind: must be one of 'at_max_workers'")
    assert message.endswith("got 'nope'")
    profile = '[workers.profiles.mine]\nargv = ["x"]\nrows = "40"\n'
    assert error_for(tmp_path, profile).startswith("shoal.toml:3: workers.profiles['mine'].rows: expected")


def test_toml_line_falls_back_to_the_enclosing_table() -> None:
    text = "[scaling]\nmin_workers = 5\nmax_workers = 2\n"
    assert toml_line(text, "scaling") == 1
    assert toml_line(text, "scaling.tick_s") == 1
    assert toml_line('scaling = { max_workers = "x" }\n', "scaling.max_workers") == 1
    assert toml_line("", "log.level") is None


def test_dict_configs_name_the_unknown_key() -> None:
    with pytest.raises(ValidationError) as info:
        config_from_dict({"log": {"lvel": "info"}})
    assert str(info.value) == "log.lvel: unknown key (did you mean 'level'?)"
