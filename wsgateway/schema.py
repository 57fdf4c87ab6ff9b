"""The config schema: the rule a config field carries beside it, and the checker that applies it.

:mod:`wsgateway.config` declares frozen dataclasses whose fields carry their rule as metadata::

    port: int = field(default=8080, metadata=PORT)  # 0 = pick a free port
    backlog: int = 2048  # no metadata: the default rule, a number > 0

Call :func:`build` (``load_config`` does) to turn a parsed TOML table into such a dataclass;
each section's ``__post_init__`` calls :func:`check_fields`, so that a section built in code
obeys the same field rules. Both raise :class:`~wsgateway.errors.ConfigError` with a one-line
message naming the dotted key (``listen.port: must be an integer from 0 to 65535, got 'abc'``).

What the checker does with a field:

- its annotation is its type check (``bool`` is never a number, an integer is fine where a
  float is expected, a list field also takes a single string); a nested dataclass is a
  sub-table and a tuple of dataclasses a list of tables (``[[key]]``);
- :attr:`Rule.numbers` is the range a number must be in ("> 0" unless the rule says otherwise);
- :attr:`Rule.pattern` is a regex the string (each item of a list) must fully match;
- :attr:`Rule.file` makes it a path: resolved against the config file's folder, stored
  absolute, must be an existing file;
- :attr:`Rule.keys` makes a mapping field take every other key of its table (``[routes]``);
- a field with ``repr=False`` is a secret: it may instead be given as ``<name>_env = "VAR"``,
  and its value is never echoed in a message;
- a key that names no field is an error, with the closest field name as a hint;
- a field named after a Python keyword plus ``_`` (``lambda_``) is the keyword in the file.

After building a table :func:`build` calls the dataclass's ``check()`` method, if it has one:
the rules that span several fields of that section.
"""

from __future__ import annotations

import difflib
import json
import keyword
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["FILE", "FILLED", "NON_NEGATIVE", "NOT_IN_FILE", "PORT", "Rule", "build", "check_fields",
           "read_toml", "rule"]

_T = TypeVar("_T")
_Range = tuple[str, Callable[[float], bool]]  # (text for the message, test)
_POSITIVE: _Range = ("> 0", lambda x: x > 0)
_KEY = "wsgateway.rule"  # the field-metadata key a Rule sits under


@dataclass(frozen=True, slots=True)
class Rule:
    """What one config field may hold, beyond its annotated type; build it with :func:`rule`."""

    pattern: str | None = None  # regex each string must fully match
    means: str = ""  # what the pattern asks for: the message reads "must be <means>"
    numbers: _Range = _POSITIVE  # the range a number must be in
    file: bool = False  # a path to an existing file, stored absolute
    keys: tuple[str, str] | None = None  # (regex, means) for the keys of a table-rest mapping
    in_file: bool = True  # False: set by the loader, never read from the file


def rule(
    pattern: str | None = None,
    means: str = "",
    *,
    numbers: _Range = _POSITIVE,
    file: bool = False,
    keys: tuple[str, str] | None = None,
    in_file: bool = True,
) -> Mapping[str, Rule]:
    """Field metadata carrying a :class:`Rule`: ``field(default=..., metadata=rule(...))``."""
    return MappingProxyType({_KEY: Rule(pattern, means, numbers, file, keys, in_file)})


NON_NEGATIVE = rule(numbers=(">= 0", lambda x: x >= 0))
PORT = rule(numbers=("from 0 to 65535", lambda x: 0 <= x <= 65535))
FILLED = rule(r"(?s).+", "non-empty")
FILE = rule(file=True)
NOT_IN_FILE = rule(in_file=False)
_DEFAULT = Rule()


def read_toml(file: Path) -> Mapping[str, Any]:
    """Parse the TOML file at absolute ``file``; call before :func:`build`.

    Raises ConfigError for an unreadable file, non-UTF-8 text or a TOML syntax error (naming
    file and line).
    """
    try:
        return tomllib.loads(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError("", f"{file}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{file}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:  # its text ends "(at line L, column C)"
        raise ConfigError("", f"{file}: invalid TOML: {exc}") from None


def build(cls: type[_T], data: Any, *, env: Mapping[str, str], base_dir: str) -> _T:
    """Check a parsed TOML document against dataclass ``cls`` and build it.

    ``env`` supplies ``*_env`` secrets; relative file paths resolve against ``base_dir``.
    Raises ConfigError naming the first bad key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("", f"the config must be a table, got {_show(data)}")
    return _section(cls, data, "", _Context(env, base_dir))


def check_fields(section: Any, prefix: str) -> None:
    """Check each field value of a built dataclass against its rule; call from ``__post_init__``.

    ``prefix`` is the section's dotted key (``"auth"``; ``""`` at the top). Nested sections are
    skipped: they checked themselves when built. Relative paths are looked for from the current
    directory. Raises ConfigError.
    """
    cls = type(section)
    ctx = _Context({}, os.getcwd())
    for f in fields(cls):
        typ, value, key = _hints(cls)[f.name], getattr(section, f.name), _join(prefix, _in_file(f.name))
        if _is_section(typ) or _sections_of(typ) is not None:
            continue
        if value is None and type(None) in get_args(typ):
            continue
        if _rule_of(f).keys is not None:
            _mapping(prefix, typ, _rule_of(f), value, ctx)
        else:
            _value(key, typ, _rule_of(f), value, ctx, hide=not f.repr)


# ---------------------------------------------------------------- building tables


@dataclass(frozen=True, slots=True)
class _Context:
    env: Mapping[str, str]
    base_dir: str


class _Invalid(Exception):
    """A value failed a check; the text reads "must be ..." and the caller adds key and value."""


def _section(cls: type[_T], raw: Any, prefix: str, ctx: _Context) -> _T:
    """Build one dataclass from its table: unknown keys, each field, then its ``check()``."""
    table = _table(raw, prefix)
    specs = [f for f in fields(cls) if _rule_of(f).in_file]  # type: ignore[arg-type]
    rest = next((f for f in specs if _rule_of(f).keys is not None), None)
    plain = [f for f in specs if f is not rest]
    secrets = {f.name for f in plain if not f.repr}
    known = [_in_file(f.name) for f in plain] + [f"{n}_env" for n in secrets]
    if rest is None:
        _reject_unknown(table, known, prefix)
    values: dict[str, Any] = {}
    for f in plain:
        key, hide = _join(prefix, _in_file(f.name)), f.name in secrets
        raw_value = _secret(table, f.name, key, ctx.env) if hide else table.get(_in_file(f.name), MISSING)
        if raw_value is not MISSING:
            values[f.name] = _field(key, _hints(cls)[f.name], _rule_of(f), raw_value, ctx, hide=hide)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(key, "is required" + (f" (or {f.name}_env)" if hide else ""))
    named = {k: v for k, v in table.items() if k not in known}
    if rest is not None and named:  # naming any key replaces the default mapping wholesale
        values[rest.name] = _mapping(prefix, _hints(cls)[rest.name], _rule_of(rest), named, ctx)
    built = cls(**values)
    check: Callable[[], None] | None = getattr(built, "check", None)
    if check is not None:
        check()
    return built


def _field(key: str, typ: Any, rule: Rule, raw: Any, ctx: _Context, *, hide: bool) -> Any:
    """One field's value from the file: a sub-table, a list of tables, or a checked value."""
    if _is_section(typ):
        return _section(typ, raw, key, ctx)
    if (item := _sections_of(typ)) is not None:
        return tuple(_section(item, t, f"{key}[{i}]", ctx) for i, t in enumerate(_tables(raw, key)))
    return _value(key, typ, rule, raw, ctx, hide=hide)


def _value(key: str, typ: Any, rule: Rule, raw: Any, ctx: _Context, *, hide: bool) -> Any:
    """Type-check ``raw``, then check it (each item of a list) against ``rule``."""
    value = _checked(key, raw, hide, _typed, typ, raw, rule.numbers)
    if isinstance(value, tuple):
        items = enumerate(value)
        return tuple(_checked(f"{key}[{i}]", v, hide, _check, rule, v, ctx) for i, v in items)
    return _checked(key, value, hide, _check, rule, value, ctx)


def _mapping(
    prefix: str, typ: Any, rule: Rule, named: Mapping[str, Any], ctx: _Context
) -> Mapping[str, Any]:
    """A table-rest mapping (``[routes]``): every key checked first, then every value."""
    assert rule.keys is not None
    pattern, means = rule.keys
    for name in named:
        if not re.fullmatch(pattern, name):
            raise ConfigError(_join(prefix, name), f"must be {means}")
    value_type = get_args(typ)[1]
    if _is_section(value_type):  # a table of sub-tables ([route_settings."key"])
        return MappingProxyType({k: v if isinstance(v, value_type) else _section(value_type, v, _join(prefix, k), ctx)
                                 for k, v in named.items()})
    return MappingProxyType(
        {k: _value(_join(prefix, k), value_type, rule, v, ctx, hide=False) for k, v in named.items()})


def _checked(key: str, shown: Any, hide: bool, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, with an _Invalid turned into a ConfigError naming ``key`` and value."""
    try:
        return check(*args)
    except _Invalid as exc:
        raise ConfigError(key, f"{exc}, got {_show(shown, hide)}") from None


def _typed(typ: Any, raw: Any, limits: _Range) -> Any:
    if typ is bool or typ == bool | None:
        if isinstance(raw, bool):
            return raw
        raise _Invalid("must be true or false")
    if typ is int or typ is float:
        number = not isinstance(raw, bool) and isinstance(raw, int if typ is int else (int, float))
        if number and abs(raw) <= sys.float_info.max and limits[1](raw):  # no nan/inf
            return typ(raw)
        raise _Invalid(f"must be {'an integer' if typ is int else 'a number'} {limits[0]}")
    if typ == tuple[str, ...]:
        if isinstance(raw, str):
            return (raw,)
        if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise _Invalid("must be a string or a list of strings")
    if typ is str or typ == str | None:
        if isinstance(raw, str):
            return raw
        raise _Invalid("must be a string")
    raise TypeError(f"schema.py has no check for type {typ!r}")  # a bug here, not in the file


def _check(rule: Rule, value: Any, ctx: _Context) -> Any:
    if not isinstance(value, str):
        return value
    if rule.file:
        path = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(value)))
        if not os.path.isfile(path):
            raise _Invalid(f"must name an existing file (looked for {path})")
        return path
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        raise _Invalid(f"must be {rule.means}")
    return value


def _secret(table: Mapping[str, Any], name: str, key: str, env: Mapping[str, str]) -> Any:
    """The secret's raw value: inline, from the variable ``<name>_env`` names, or MISSING."""
    if f"{name}_env" not in table:
        return table.get(name, MISSING)
    if name in table:
        raise ConfigError(key, f"give {name} or {name}_env, not both")
    var = table[f"{name}_env"]
    if not isinstance(var, str) or not var:
        raise ConfigError(f"{key}_env", f"must name an environment variable, got {_show(var)}")
    if not env.get(var):
        state = "empty" if var in env else "not set"
        raise ConfigError(f"{key}_env", f"environment variable {var} is {state}")
    return env[var]


def _table(raw: Any, key: str) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    raise ConfigError(key, f"must be a table ([{key}]), got {_show(raw)}")


def _tables(raw: Any, key: str) -> list[Mapping[str, Any]]:
    if isinstance(raw, (list, tuple)) and all(isinstance(t, Mapping) for t in raw):
        return list(raw)
    raise ConfigError(key, f"must be a list of tables ([[{key}]]), got {_show(raw)}")


def _reject_unknown(table: Mapping[str, Any], known: list[str], prefix: str) -> None:
    for name in table:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(_join(prefix, str(name)), "unknown key" + hint)


# ---------------------------------------------------------------- reading the declarations


def _rule_of(f: Field[Any]) -> Rule:
    rule: Rule = f.metadata.get(_KEY, _DEFAULT)
    return rule


def _is_section(typ: Any) -> bool:
    return isinstance(typ, type) and is_dataclass(typ)


def _sections_of(typ: Any) -> type | None:
    """The dataclass of a ``tuple[SomeDataclass, ...]`` field, else None."""
    args = get_args(typ)
    if get_origin(typ) is tuple and len(args) == 2 and args[1] is ... and _is_section(args[0]):
        item: type = args[0]
        return item
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass, computed once per class."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def _in_file(name: str) -> str:
    """A field's key in the file: ``lambda_`` is ``lambda`` (a keyword cannot name a field)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _join(prefix: str, name: str) -> str:
    """Dotted key for messages; odd names are quoted as TOML would (``routes."a b"``)."""
    shown = name if re.fullmatch(r"[A-Za-z0-9_$-]+", name) else json.dumps(name)
    return f"{prefix}.{shown}" if prefix else shown


def _show(value: Any, hide: bool = False) -> str:
    """The offending value for a message: TOML-ish, one line, short; secrets are not echoed."""
    if hide:
        return f"<hidden {type(value).__name__}>"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
