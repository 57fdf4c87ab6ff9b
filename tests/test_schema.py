"""Tests for wsgateway.schema: rules declared beside dataclass fields, applied by the checker.

Pure unit tests on small dataclasses declared here; no sockets. The gateway's own sections
are covered in test_config.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from wsgateway.errors import ConfigError
from wsgateway.schema import (
    FILE,
    FILLED,
    NON_NEGATIVE,
    NOT_IN_FILE,
    PORT,
    build,
    check_fields,
    read_toml,
    rule,
)


@dataclass(frozen=True, slots=True)
class Pair:
    name: str = field(metadata=rule(r"[a-z]+", "lower-case letters"))
    token: str = field(repr=False, metadata=FILLED)

    def __post_init__(self) -> None:
        check_fields(self, "box.pairs")


@dataclass(frozen=True, kw_only=True, slots=True)
class Box:
    size: int = 3
    port: int = field(default=1, metadata=PORT)
    wait_s: float = field(default=0.0, metadata=NON_NEGATIVE)
    on: bool = False
    tags: tuple[str, ...] = field(default=(), metadata=FILLED)
    key_file: str | None = field(default=None, metadata=FILE)
    pairs: tuple[Pair, ...] = ()
    note: str = field(default="", metadata=NOT_IN_FILE)

    def __post_init__(self) -> None:
        check_fields(self, "box")

    def check(self) -> None:
        if self.size < self.port:
            raise ConfigError("box.size", "must be >= port")


@dataclass(frozen=True, kw_only=True, slots=True)
class Table:
    title: str = "t"
    rest: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"a": "x"}), metadata=rule(
        r"[xyz]", "x, y or z", keys=(r"[a-c]", "a, b or c")))


@dataclass(frozen=True, kw_only=True, slots=True)
class Top:
    box: Box = field(default_factory=Box)
    table: Table = field(default_factory=Table)


def error(data: Any, env: Mapping[str, str] | None = None, base_dir: str = "/") -> str:
    with pytest.raises(ConfigError) as info:
        build(Top, data, env=env or {}, base_dir=base_dir)
    return str(info.value)


def test_defaults_and_coercion() -> None:
    top = build(Top, {"box": {"size": 5, "wait_s": 2, "tags": "one"}}, env={}, base_dir="/")
    assert top.box == Box(size=5, wait_s=2.0, tags=("one",))
    assert isinstance(top.box.wait_s, float)
    assert top.table == Table()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the config must be a table, got []"),
        ({"box": 1}, "box: must be a table ([box]), got 1"),
        ({"box": {"size": 0}}, "box.size: must be an integer > 0, got 0"),
        ({"box": {"size": True}}, "box.size: must be an integer > 0, got true"),
        ({"box": {"port": 70000}}, "box.port: must be an integer from 0 to 65535, got 70000"),
        ({"box": {"wait_s": -1}}, "box.wait_s: must be a number >= 0, got -1"),
        ({"box": {"on": 1}}, "box.on: must be true or false, got 1"),
        ({"box": {"tags": ["a", ""]}}, "box.tags[1]: must be non-empty, got ''"),
        ({"box": {"tags": [1]}}, "box.tags: must be a string or a list of strings, got [1]"),
        ({"box": {"sise": 1}}, "box.sise: unknown key (did you mean size?)"),
        ({"box": {"note": ""}}, "box.note: unknown key"),
        ({"box": {"pairs": {}}}, "box.pairs: must be a list of tables ([[box.pairs]]), got {}"),
        ({"box": {"pairs": [{"name": "A", "token": "t"}]}},
         "box.pairs[0].name: must be lower-case letters, got 'A'"),
        ({"box": {"pairs": [{"name": "a"}]}}, "box.pairs[0].token: is required (or token_env)"),
        ({"box": {"size": 1, "port": 2}}, "box.size: must be >= port"),
        ({"table": {"d": "x"}}, "table.d: must be a, b or c"),
        ({"table": {"b": "w"}}, "table.b: must be x, y or z, got 'w'"),
        ({"table": {"a b": "x"}}, 'table."a b": must be a, b or c'),
    ],
)
def test_messages_name_the_key(data: Any, message: str) -> None:
    assert error(data) == message


def test_rest_of_table_replaces_the_default_mapping() -> None:
    table = build(Top, {"table": {"title": "T", "b": "y", "c": "z"}}, env={}, base_dir="/").table
    assert table.title == "T"
    assert dict(table.rest) == {"b": "y", "c": "z"}
    assert isinstance(table.rest, MappingProxyType)


def test_secret_from_env_and_never_echoed() -> None:
    pairs = {"pairs": [{"name": "a", "token_env": "TOK"}]}
    box = build(Top, {"box": pairs}, env={"TOK": "s3"}, base_dir="/").box
    assert box.pairs == (Pair("a", "s3"),)
    assert "s3" not in repr(box)
    assert error({"box": pairs}) == "box.pairs[0].token_env: environment variable TOK is not set"
    assert error({"box": pairs}, env={"TOK": ""}) == "box.pairs[0].token_env: environment variable TOK is empty"
    both = {"pairs": [{"name": "a", "token": "x", "token_env": "TOK"}]}
    assert error({"box": both}) == "box.pairs[0].token: give token or token_env, not both"
    bad = {"pairs": [{"name": "a", "token": 5}]}
    assert error({"box": bad}) == "box.pairs[0].token: must be a string, got <hidden int>"


def test_file_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("x")
    box = build(Top, {"box": {"key_file": "k.pem"}}, env={}, base_dir=str(tmp_path)).box
    assert box.key_file == str(tmp_path / "k.pem")
    missing = tmp_path / "nope.pem"
    assert error({"box": {"key_file": "nope.pem"}}, base_dir=str(tmp_path)) == (
        f"box.key_file: must name an existing file (looked for {missing}), got 'nope.pem'")


def test_field_rules_hold_for_sections_built_in_code() -> None:
    """__post_init__ runs the same field rules; the cross-field check() runs only at load."""
    with pytest.raises(ConfigError) as info:
        Box(port=-1)
    assert str(info.value) == "box.port: must be an integer from 0 to 65535, got -1"
    with pytest.raises(ConfigError) as info:
        Pair("ok", "")
    assert str(info.value) == "box.pairs.token: must be non-empty, got <hidden str>"
    with pytest.raises(ConfigError) as info:
        Box(key_file="/nonexistent/k.pem")
    assert info.value.key == "box.key_file"
    assert Box(size=1, port=2).size == 1  # check() is the loader's


def test_read_toml_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[box]\nsize = 2\n")
    assert read_toml(path) == {"box": {"size": 2}}
    path.write_text("[box\n")
    with pytest.raises(ConfigError) as info:
        read_toml(path)
    assert str(info.value).startswith(f"{path}: invalid TOML: ") and "line 1" in str(info.value)
    path.write_bytes(b"\xff")
    with pytest.raises(ConfigError) as info:
        read_toml(path)
    assert str(info.value) == f"{path}: config file is not UTF-8 text"
    with pytest.raises(ConfigError) as info:
        read_toml(tmp_path / "absent.toml")
    assert str(info.value).startswith(f"{tmp_path / 'absent.toml'}: cannot read config file: ")
