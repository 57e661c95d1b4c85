"""How fields logged elsewhere become config, env and outcome: text parsed back, names nested, maps read."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaspace.errors import MetaspaceError
from metaspace.sources.mapping import FieldMap, assemble, config_hash, load_map, nest, parse_text


@pytest.mark.parametrize("text, value", [
    ("0.1", 0.1), ("120", 120), ("-3", -3), ("True", True), ("false", False), ("None", None), ("", None),
    ("nan", None), ("1e400", None), ("[1, 2.5]", [1, 2.5]), ("v2-beta", "v2-beta"), ("[a, b]", "[a, b]"),
    ('["x"]', '["x"]'), ("2024-03-29", "2024-03-29"), ("0x1F", "0x1F"),
])
def test_text_is_parsed_back_and_what_does_not_parse_stays_text(text: str, value) -> None:
    assert parse_text(text) == value and type(parse_text(text)) is type(value)


def test_dotted_names_nest_and_a_name_that_is_also_a_parent_keeps_its_dots() -> None:
    assert nest({"risk.target_vol": 0.1, "risk.max_leverage": 2, "lookback": 5}) == {
        "lookback": 5, "risk": {"target_vol": 0.1, "max_leverage": 2}}
    assert nest({"risk": 1, "risk.vol": 2}) == {"risk": 1, "risk.vol": 2}


def test_the_config_hash_ignores_key_order() -> None:
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1}) != config_hash({"a": 2})


def test_exact_names_win_over_patterns_branches_over_ignore_and_named_keys_missing_from_a_run_are_null() -> None:
    fmap = load_map({"ignore": ["params.*", "risk.debug"], "config": ["lr", "risk.*"], "outcome": ["sharpe", "calmar"]})
    items = [("params", "lr", "0.1"), ("params", "seed", "7"), ("params", "risk.vol", "0.2"),
             ("params", "risk.debug", "1"), ("metrics", "sharpe", 1.2)]
    parts = assemble(items, fmap, lambda kind, name: "config", lambda kind, value: parse_text(value))
    assert parts.branches == {"config": {"lr": 0.1, "risk": {"vol": 0.2}}, "env": {},
                              "outcome": {"sharpe": 1.2, "calmar": None}}


@pytest.mark.parametrize("text, suffix, message", [
    ("config: [a\n", ".yaml", "is not valid YAML"),
    ("{not json", ".json", "is not valid JSON"),
    ('{"outcomes": []}', ".json", "unknown key(s) outcomes"),
    ('{"config": [1]}', ".json", "config must be a list of names"),
    ('{"as_of_date": ["a"]}', ".json", "as_of_date must be a name"),
    ("[1, 2]", ".json", "expected a mapping"),
])
def test_a_bad_map_file_is_a_clear_error(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    path = tmp_path / f"map{suffix}"
    path.write_text(text)
    with pytest.raises(MetaspaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_map(path)


def test_a_map_file_in_yaml_or_json_gives_the_same_map(tmp_path: Path) -> None:
    (tmp_path / "m.yml").write_text("config: ['risk.*']\nas_of_date: valid_until\nenv_artifact: null\n")
    (tmp_path / "m.json").write_text('{"config": ["risk.*"], "as_of_date": "valid_until", "env_artifact": null}')
    assert load_map(tmp_path / "m.yml") == load_map(tmp_path / "m.json") == FieldMap(
        config=("risk.*",), as_of_date="valid_until", env_artifact=None)
