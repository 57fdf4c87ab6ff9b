"""Route selection: which route a client's message goes to, the way AWS API Gateway chooses.

A WebSocket API has one *route selection expression* (usually ``$request.body.action``). For
each text frame that parses as a JSON object the expression is evaluated against the body and
the resulting string is compared exactly with the custom route keys; anything else (no match,
non-JSON, JSON that is not an object, binary frames) goes to ``$default`` when it exists, and
otherwise the caller sends AWS's ``Forbidden`` frame and keeps the socket open.

Build a :class:`Router` once at start-up from the configured expression and routes; it is
frozen afterwards and :meth:`Router.select` is the per-message call.

Expression syntax (AWS's, with the choices AWS leaves open written down):

- ``$request.body.<path>``: a variable. Unbraced, its path is ``.name`` segments of
  ``[A-Za-z0-9_-]`` (the hyphen is allowed as in AWS's ``$request.header.x-api-key``) and
  ``[N]`` array indexes; it ends at the first other character, so a trailing ``.`` is text.
- ``${request.body.<path>}``: the same with explicit bounds; a braced name may hold any
  character except ``. [ ] { } $``.
- ``\\$`` is a literal ``$`` (so ``\\$default`` selects the ``$default`` route); any other
  backslash is literal text. Everything else is literal text.
- Only ``request.body`` can be read: ``$request.header.*``, ``$request.querystring.*`` and
  ``$context.*`` do not exist for message routing here, and an unescaped ``$`` that starts
  no variable is an error rather than text, so that typos fail at start-up.
- Evaluation happens once: a value that looks like an expression is not evaluated again.

Values are turned into text as follows (AWS documents only strings, the missing-path case
and the array form; the rest is chosen here):

- a missing path, a path through a non-container, an index past the end: ``""``;
- a string as is; ``true``/``false``; an integer in decimal; a float as the stdlib's
  ``json.dumps`` prints it (``repr``, the shortest round-trip form: ``1.5``, ``100.0``,
  ``1e+100``, ``2.5e-07``; the sender's spelling such as ``1E2`` is not kept, and the form
  does not change with the orjson version, whose own float output has);
  ``null`` as ``""``, like a missing path;
- an array as ``[item1, item2]`` (AWS's documented form, also Java's ``List.toString``);
  an object the same way, ``{key1=value1, key2=value2}``, with members sorted by key so
  that member order does not change the route; inside either, strings are unquoted and
  ``null`` is ``null``.

orjson reads integers beyond 64 bits as floats, so such a number becomes e.g.
``1.8446744073709552e+19``, not its exact digits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import orjson

__all__ = ["Router", "SelectionExpression"]

T = TypeVar("T")

_RESERVED = ("$connect", "$disconnect", "$default")

# One compiled path: str segments index objects, int segments index arrays.
_Path = tuple[str | int, ...]
_Evaluate = Callable[[dict[str, Any]], str]

_ROOT = "request.body"
# An unbraced path starts with a name; a braced one allows more characters in names.
_BARE_PATH = re.compile(r"\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+|\[[0-9]+\])*")
_BRACED_PATH = re.compile(r"(?:\.[^.\[\]{}$]+|\[[0-9]+\])+")
_SEGMENT = re.compile(r"\.([^.\[\]{}$]+)|\[([0-9]+)\]")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class SelectionExpression:
    """A compiled AWS route selection expression.

    Examples: ``"$request.body.action"``, ``"${request.body.service}/${request.body.action}"``,
    ``"action"`` (static text), ``"\\$default"`` (the literal ``$default``). The module
    docstring gives the syntax and how values become text.

    Construct once (at start-up); :meth:`evaluate` is cheap and never mutates anything.
    """

    __slots__ = ("_blank", "_on_object", "_source", "single_key")

    def __init__(self, expression: str) -> None:
        """Parse and compile ``expression``.

        Raises:
            ValueError: the expression is empty, has an unbalanced ``${``, an empty or
                malformed path, or a variable other than ``request.body.<path>``; the
                message quotes the expression and the position.
        """
        pieces = _parse(expression)
        self._source = expression
        # What every variable reads on a body that is not an object: nothing.
        self._blank = "".join(p for p in pieces if isinstance(p, str))
        self._on_object = _compile(pieces)
        # ``$request.body.NAME`` (the usual expression): NAME, which Router.select reads
        # inline; else None.
        path = pieces[0] if len(pieces) == 1 else None
        self.single_key = path[0] if isinstance(path, tuple) and len(path) == 1 and isinstance(path[0], str) else None

    def evaluate(self, body: object) -> str:
        """Return the route key the expression selects for ``body``.

        ``body`` is a JSON value as ``orjson.loads`` returns it (acyclic; other Python
        values are turned into text with ``str``). For a body that is not an object every
        variable reads as ``""`` and only the static text remains.
        """
        if isinstance(body, dict):
            return self._on_object(body)
        return self._blank

    def __repr__(self) -> str:
        return f"SelectionExpression({self._source!r})"


class Router(Generic[T]):
    """Route keys -> targets (any type ``T``, e.g. integrations), frozen after construction.

    ``connect``, ``disconnect`` and ``default`` hold the reserved routes' targets, or None.
    """

    __slots__ = ("_fallback", "_key_of", "_keys", "_single_key", "_table", "connect", "default", "disconnect")

    connect: T | None
    disconnect: T | None
    default: T | None
    _key_of: _Evaluate
    _single_key: str | None  # SelectionExpression.single_key
    _table: dict[str, tuple[str, T]]  # custom keys only
    _fallback: tuple[str, T] | None  # ("$default", target), or None without one
    _keys: list[str]

    def __init__(self, selection_expression: str, routes: Mapping[str, T]) -> None:
        """Compile the expression and copy the routes (later changes to ``routes`` are not seen).

        Route keys are taken as given: the config's rule on ``[routes]`` keys has refused
        empty ones and unknown ``$`` keys.

        Raises:
            ValueError: a bad expression (see :class:`SelectionExpression`).
        """
        expression = SelectionExpression(selection_expression)
        key_of = expression._on_object
        table: dict[str, tuple[str, T]] = {}
        for key, target in routes.items():
            if key not in _RESERVED:
                # Built once so that select() returns it without allocating.
                table[key] = (key, target)
        init = object.__setattr__
        init(self, "_key_of", key_of)
        init(self, "_single_key", expression.single_key)
        init(self, "_table", table)
        init(self, "_keys", list(routes))
        init(self, "connect", routes.get("$connect"))
        init(self, "disconnect", routes.get("$disconnect"))
        init(self, "default", routes.get("$default"))
        fallback = ("$default", routes["$default"]) if "$default" in routes else None
        init(self, "_fallback", fallback)

    def select(self, message: str | bytes) -> tuple[str, T] | None:
        """Choose the route for one text frame; call once per received text message.

        ``message`` is the frame's text, or its raw UTF-8 bytes (parsing bytes skips a
        decode). Returns ``(route_key, target)``: a custom route when the message is a JSON
        object whose evaluated key equals a custom key exactly, else ``("$default",
        default)``. Returns None when that would be ``$default`` and there is none: the
        caller then sends AWS's ``Forbidden`` frame.

        Never raises: malformed JSON, invalid UTF-8, nesting deeper than 1024 levels and
        out-of-range numbers go to ``$default``. So does a key that evaluates to
        ``$connect`` or ``$disconnect``: those routes are not selectable by messages.
        """
        body = json_object(message)
        if body is None:
            return self._fallback
        # A string member named by the usual expression is the key as is (what _single_key's
        # closure answers), read without calling it.
        key = self._single_key
        if key is not None and type(value := body.get(key)) is str:
            return self._table.get(value, self._fallback)
        return self._table.get(self._key_of(body), self._fallback)

    def select_binary(self) -> tuple[str, T] | None:
        """Choose the route for a binary frame: always ``$default`` (None without one)."""
        return self._fallback

    def keys(self) -> list[str]:
        """Return every configured route key, reserved ones included, in configuration order."""
        return list(self._keys)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Router is frozen; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Router is frozen; cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"Router(keys={self._keys!r})"


# --- parsing --------------------------------------------------------------------------------


def _parse(expression: str) -> list[str | _Path]:
    """Split ``expression`` into literal text and variable paths, adjacent text merged."""
    if not isinstance(expression, str) or not expression:
        raise ValueError(f"route selection expression must be a non-empty string: {expression!r}")
    pieces: list[str | _Path] = []
    text: list[str] = []
    i, n = 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch == "\\" and expression.startswith("$", i + 1):
            text.append("$")
            i += 2
        elif ch == "$":
            path, i = _parse_variable(expression, i)
            if text:
                pieces.append("".join(text))
                text.clear()
            pieces.append(path)
        else:
            text.append(ch)
            i += 1
    if text:
        pieces.append("".join(text))
    return pieces


def _parse_variable(expression: str, start: int) -> tuple[_Path, int]:
    """Parse the variable at ``expression[start] == "$"``; return its path and its end."""
    if expression.startswith("{", start + 1):
        close = expression.find("}", start + 2)
        if close < 0:
            raise _syntax(expression, start, "unbalanced '${' (no closing '}')")
        return _parse_braced(expression, start, expression[start + 2 : close]), close + 1
    word = _word_at(expression, start + 1)
    if word != _ROOT and not word.startswith(_ROOT + "."):
        raise _unknown(expression, start, word)
    match = _BARE_PATH.match(expression, start + 1 + len(_ROOT))
    if match is None:
        raise _syntax(expression, start, "expected $request.body.<name> (a path is required)")
    return _segments(match.group()), match.end()


def _parse_braced(expression: str, start: int, inner: str) -> _Path:
    if not inner:
        raise _syntax(expression, start, "empty '${}'")
    path = inner[len(_ROOT) :]
    if not inner.startswith(_ROOT) or path[:1] not in ("", ".", "["):
        raise _unknown(expression, start, inner)
    if not path.startswith("."):
        raise _syntax(expression, start, "expected ${request.body.<name>} (a path is required)")
    if "{" in path or "$" in path:
        raise _syntax(expression, start, "'$' and '{' are not allowed inside '${...}'")
    if _BRACED_PATH.fullmatch(path) is None:
        raise _syntax(expression, start, f"malformed path {path!r} (empty name or bad [index])")
    return _segments(path)


def _word_at(expression: str, position: int) -> str:
    end = position
    while end < len(expression) and expression[end] in _WORD_CHARS:
        end += 1
    return expression[position:end]


def _segments(path: str) -> _Path:
    """``.a[0].b`` -> ``("a", 0, "b")``; ``path`` already matched a whole-path pattern."""
    return tuple(name if name else int(index) for name, index in _SEGMENT.findall(path))


def _syntax(expression: str, position: int, problem: str) -> ValueError:
    return ValueError(
        f"invalid route selection expression {expression!r} at position {position}: {problem}"
    )


def _unknown(expression: str, position: int, name: str) -> ValueError:
    if not name:
        problem = "a bare '$' must be escaped as '\\$'"
    elif name == "default":
        problem = "unknown variable '$default'; write '\\$default' for the literal route key"
    else:
        problem = (
            f"unknown variable {name!r}: only request.body.<path> is available for "
            "message routing (not request.header, request.querystring or context)"
        )
    return _syntax(expression, position, problem)


# --- evaluation -----------------------------------------------------------------------------


def _compile(pieces: list[str | _Path]) -> _Evaluate:
    """Turn parsed pieces into the smallest closure that evaluates them on an object body."""
    if len(pieces) > 1:
        return _template(tuple(pieces))
    piece = pieces[0]
    if isinstance(piece, str):
        return lambda body: piece
    if len(piece) == 1 and isinstance(piece[0], str):
        return _single_key(piece[0])
    return _single_path(piece)


def _single_key(key: str) -> _Evaluate:
    """The hot path: ``$request.body.action`` on a dict is one ``get``."""

    def evaluate(body: dict[str, Any]) -> str:
        value = body.get(key)
        if type(value) is str:
            return value
        return _text(value)

    return evaluate


def _single_path(path: _Path) -> _Evaluate:
    return lambda body: _text(_lookup(body, path))


def _template(pieces: tuple[str | _Path, ...]) -> _Evaluate:
    return lambda body: "".join(
        [p if isinstance(p, str) else _text(_lookup(body, p)) for p in pieces]
    )


def _lookup(body: object, path: _Path) -> object:
    """Walk ``path`` from ``body``; None when a step is missing or has the wrong type."""
    value = body
    for segment in path:
        if isinstance(segment, str):
            if not isinstance(value, dict):
                return None
            value = value.get(segment)
        elif isinstance(value, list) and segment < len(value):
            value = value[segment]
        else:
            return None
    return value


def _text(value: object) -> str:
    """A selected value as route-key text; missing and ``null`` are ``""``."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    return _element_text(value)


def _element_text(value: object) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, (list, dict)):
        return _compound_text(value)
    return str(value)


_END = object()


def _compound_text(root: list[Any] | dict[str, Any]) -> str:
    """``[a, b]`` / ``{k=v}`` text, built with an explicit stack: bodies may nest deeper
    than Python's recursion limit."""
    parts: list[str] = []
    stack: list[tuple[Iterator[Any], str, bool]] = []
    value: object = root
    while True:
        if isinstance(value, list):
            parts.append("[")
            stack.append((iter(value), "]", False))
            separate = False
        elif isinstance(value, dict):
            parts.append("{")
            stack.append((iter(sorted(value.items(), key=_member_key)), "}", True))
            separate = False
        else:
            parts.append(_element_text(value))
            separate = True
        while stack:
            items, close, is_object = stack[-1]
            entry: Any = next(items, _END)
            if entry is not _END:
                break
            parts.append(close)
            stack.pop()
            separate = True
        else:
            return "".join(parts)
        if separate:
            parts.append(", ")
        if is_object:
            parts.append(f"{entry[0]}=")
            value = entry[1]
        else:
            value = entry


def _member_key(member: tuple[Any, Any]) -> str:
    return str(member[0])


# --- parsing the frame ----------------------------------------------------------------------

# "{" or JSON whitespace, as str[0] gives it (a str) and as bytes[0] gives it (an int).
_OBJECT_STARTS = frozenset([*"{ \t\n\r", *b"{ \t\n\r"])


# orjson >= 3.9.15 (pinned) stops at 1024 levels of nesting with an error; older releases
# recursed without limit and could crash the process (CVE-2024-27454).
_loads: Callable[[str | bytes | bytearray | memoryview], Any] = orjson.loads


def json_object(message: str | bytes) -> dict[str, Any] | None:
    """``message`` parsed if it is a JSON object, else None; never raises (malformed JSON,
    invalid UTF-8, nesting deeper than 1024 levels, out-of-range numbers: None)."""
    try:
        # A JSON object starts with "{" or whitespace: anything else is not parsed, sparing
        # orjson's costly exception on frames such as "ping".
        if message[0] not in _OBJECT_STARTS:  # IndexError on an empty frame
            return None
        body = _loads(message)
    except (IndexError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return body if type(body) is dict else None  # orjson builds exact dicts
