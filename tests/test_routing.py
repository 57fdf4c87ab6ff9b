"""Route selection: AWS's selection-expression rules, stringification, and the Router table.

Pure logic: no sockets, no event loop.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgateway import routing
from wsgateway.routing import Router, SelectionExpression

AWS_BODY = {"service": "chat", "action": "join"}
ROUTES = {"$connect": "C", "$disconnect": "X", "$default": "D", "join": "J", "chat/join": "CJ"}

FUZZ = settings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ in the repo

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def evaluate(expression: str, body: Any) -> str:
    return SelectionExpression(expression).evaluate(body)


def text_of(json_text: str) -> str:
    """What ``$request.body.v`` selects when the member ``v`` is spelled ``json_text``."""
    return evaluate("$request.body.v", orjson.loads(f'{{"v": {json_text}}}'))


# --- the AWS documentation's examples ----------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("${request.body.service}/${request.body.action}", "chat/join"),
        ("${request.body.action}-${request.body.invalidPath}", "join-"),
        ("action", "action"),
        ("\\$default", "$default"),
        ("$request.body.action", "join"),
        ("${request.body.action}", "join"),
        ("${request.body.service}-beta", "chat-beta"),
    ],
)
def test_aws_documented_examples(expression: str, expected: str) -> None:
    """The examples of AWS's route selection page evaluate as documented."""
    assert evaluate(expression, AWS_BODY) == expected


def test_aws_template_routes_to_the_composite_key() -> None:
    """``${service}/${action}`` selects the custom route ``chat/join``."""
    router = Router("${request.body.service}/${request.body.action}", ROUTES)
    assert router.select('{"service":"chat","action":"join"}') == ("chat/join", "CJ")


def test_escaped_default_routes_every_message_to_default() -> None:
    """``\\$default`` is the literal key ``$default``: every message goes to ``$default``."""
    router = Router("\\$default", ROUTES)
    assert router.select('{"action":"join"}') == ("$default", "D")


def test_static_expression_routes_every_object_to_that_key() -> None:
    """A static expression selects its own text for any object; non-objects still go to $default."""
    router = Router("action", {"$default": "D", "action": "A"})
    assert router.select("{}") == ("action", "A")
    assert router.select('{"action":"join"}') == ("action", "A")
    assert router.select("[1]") == ("$default", "D")


def test_evaluation_happens_once() -> None:
    """A value that looks like an expression is returned as text, not evaluated again."""
    body = {"action": "${request.body.other}", "other": "x"}
    assert evaluate("$request.body.action", body) == "${request.body.other}"


# --- paths -----------------------------------------------------------------------------------

NESTED = {"a": {"b": {"c": "deep"}, "list": ["zero", {"x": "one.x"}], "s": "str"}, "a.b": "dotted"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("$request.body.a.b.c", "deep"),
        ("${request.body.a.b.c}", "deep"),
        ("$request.body.a.list[0]", "zero"),
        ("${request.body.a.list[1].x}", "one.x"),
        ("$request.body.a.list[2]", ""),  # past the end
        ("$request.body.a.s.length", ""),  # through a string
        ("$request.body.a.b[0]", ""),  # index on an object
        ("$request.body.a.missing.c", ""),
        ("$request.body.nope", ""),
        ("$request.body.a.b.c.", "deep."),  # an unbraced path ends before a lone "."
        ("$request.body.a.b.c-x", ""),  # the hyphen belongs to an unbraced name
        ("${request.body.a.b.c}-x", "deep-x"),
        ("[$request.body.a.s]", "[str]"),
        ("$request.body.a.s$request.body.a.s", "strstr"),
    ],
)
def test_paths_walk_nested_objects_and_arrays(expression: str, expected: str) -> None:
    """Paths walk objects by name and arrays by ``[index]``; anything unreachable is ``""``."""
    assert evaluate(expression, NESTED) == expected


def test_braced_names_may_hold_characters_unbraced_ones_cannot() -> None:
    """Inside ``${...}`` a name may hold spaces, hyphens, colons, non-ASCII."""
    body = {"my key": "a", "x-y": "b", "ns:op": "c", "clé": "d"}
    expression = "${request.body.my key}${request.body.x-y}${request.body.ns:op}${request.body.clé}"
    assert evaluate(expression, body) == "abcd"


def test_non_object_bodies_leave_only_static_text() -> None:
    """On an array, string, number or null body every variable reads ``""``."""
    expression = SelectionExpression("v-${request.body.action}-${request.body.a.b}")
    for body in ([{"action": "x"}], "action", 1, None, True):
        assert expression.evaluate(body) == "v--"


def test_backslash_escapes_only_a_dollar() -> None:
    """``\\$`` is a literal ``$``; other backslashes are literal text."""
    assert evaluate("\\${request.body.action}", AWS_BODY) == "${request.body.action}"
    assert evaluate("a\\b\\$c", AWS_BODY) == "a\\b$c"
    assert evaluate("x\\", AWS_BODY) == "x\\"


# --- stringification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        ('"join"', "join"),
        ('""', ""),
        ('"caf\\u00e9"', "café"),
        ("0", "0"),
        ("42", "42"),
        ("-7", "-7"),
        ("9223372036854775807", "9223372036854775807"),
        ("18446744073709551615", "18446744073709551615"),  # the largest integer orjson keeps
        ("1.5", "1.5"),
        ("-0.0", "-0.0"),
        ("0.1", "0.1"),
        ("1.0", "1.0"),
        ("1E2", "100.0"),  # floats print as json.dumps does, not as sent
        ("1e100", "1e+100"),
        ("2.5e-7", "2.5e-07"),
        ("true", "true"),
        ("false", "false"),
        ("null", ""),
        ("[]", "[]"),
        ('["item1", "item2"]', "[item1, item2]"),  # AWS's documented form
        ('[1, 2.5, true, null, "s", [3, []]]', "[1, 2.5, true, null, s, [3, []]]"),
        ("{}", "{}"),
        ('{"b": 1, "a": [2, {"z": null, "y": "w"}]}', "{a=[2, {y=w, z=null}], b=1}"),
    ],
)
def test_stringification_of_each_json_type(json_text: str, expected: str) -> None:
    """Selected values become route-key text by the rules in the module docstring."""
    assert text_of(json_text) == expected


def test_integers_beyond_64_bits_arrive_as_floats() -> None:
    """orjson reads integers past 2**64-1 as floats, so their text is the float's."""
    assert text_of("18446744073709551616") == "1.8446744073709552e+19"


def test_missing_and_null_are_both_empty() -> None:
    """A null value and a missing member select the same ``""`` key."""
    assert text_of("null") == evaluate("$request.body.v", {}) == ""


def test_object_text_does_not_depend_on_member_order() -> None:
    """Objects print with members sorted by key, so member order never changes the route."""
    assert text_of('{"a": 1, "b": 2}') == text_of('{"b": 2, "a": 1}') == "{a=1, b=2}"


def test_values_nested_beyond_the_recursion_limit_are_stringified() -> None:
    """Stringifying a deeply nested value uses no recursion."""
    value: list[Any] = []
    for _ in range(50_000):
        value = [value]
    text = evaluate("$request.body.v", {"v": value})
    assert text == "[" * 50_001 + "]" * 50_001


# --- the router ------------------------------------------------------------------------------


@pytest.fixture
def router() -> Router[str]:
    return Router("$request.body.action", ROUTES)


def test_reserved_routes_are_exposed(router: Router[str]) -> None:
    """``connect``, ``disconnect`` and ``default`` hold the reserved routes' targets."""
    assert (router.connect, router.disconnect, router.default) == ("C", "X", "D")
    bare = Router("$request.body.action", {"join": "J"})
    assert (bare.connect, bare.disconnect, bare.default) == (None, None, None)


def test_keys_lists_every_route_in_configuration_order(router: Router[str]) -> None:
    """``keys()`` returns all keys, reserved included, as configured, and a fresh list."""
    assert router.keys() == ["$connect", "$disconnect", "$default", "join", "chat/join"]
    router.keys().clear()
    assert len(router.keys()) == 5


@pytest.mark.parametrize("message", ['{"action":"join"}', b'{"action":"join"}'])
def test_exact_match_selects_the_custom_route(router: Router[str], message: str | bytes) -> None:
    """A text frame (str, or its raw UTF-8 bytes) whose key matches exactly selects that route."""
    assert router.select(message) == ("join", "J")


def test_leading_whitespace_before_the_object_is_json(router: Router[str]) -> None:
    """JSON whitespace may precede the object."""
    assert router.select(' \t\r\n{"action": "join"} \n') == ("join", "J")
    assert router.select(b'\n{"action":"join"}') == ("join", "J")


@pytest.mark.parametrize(
    "message",
    [
        '{"action":"Join"}',  # matching is case-sensitive
        '{"action":" join"}',  # and exact
        '{"action":"leave"}',
        '{"action":"$connect"}',  # reserved routes are not selectable by messages
        '{"action":"$disconnect"}',
        '{"action":"$default"}',
        '{"action":null}',
        '{"action":["join"]}',
        '{"other":"join"}',
        "{}",
        "join",
        "ping",
        "",
        " ",
        "{",
        '{"action":"join"',
        '{"action":"join"} trailing',
        '[{"action":"join"}]',
        '"join"',
        "42",
        "null",
        "true",
        '{"action":NaN}',
        '{"action":1e400}',
        b"\xff\xfe{",
        b'{"action":"\xff"}',
        b'{"action":"join\xc3"}',
        '{"action":"\ud800"}',
    ],
)
def test_everything_else_goes_to_default(router: Router[str], message: str | bytes) -> None:
    """No match, non-JSON, non-object JSON, invalid UTF-8 and reserved keys select $default."""
    assert router.select(message) == ("$default", "D")


@pytest.mark.parametrize(
    "message", ['{"action":"leave"}', '{"action":"$connect"}', "hello", "[]", "", b"\xff"]
)
def test_without_default_unmatched_messages_select_nothing(message: str | bytes) -> None:
    """Without $default, select() returns None (the caller sends AWS's Forbidden frame)."""
    router = Router("$request.body.action", {"$connect": "C", "join": "J"})
    assert router.select(message) is None
    assert router.select('{"action":"join"}') == ("join", "J")


def test_binary_frames_go_to_default() -> None:
    """select_binary() is $default, or None without one."""
    assert Router("$request.body.action", ROUTES).select_binary() == ("$default", "D")
    assert Router("$request.body.action", {"join": "J"}).select_binary() is None


def test_integer_and_boolean_keys_match_their_text() -> None:
    """Non-string values match route keys by their text."""
    router = Router("$request.body.op", {"7": "seven", "true": "yes", "1.5": "x"})
    assert router.select('{"op":7}') == ("7", "seven")
    assert router.select('{"op":true}') == ("true", "yes")
    assert router.select('{"op":1.5}') == ("1.5", "x")
    assert router.select('{"op":"7"}') == ("7", "seven")


def test_router_is_frozen_and_copies_its_routes() -> None:
    """Attributes cannot be set, and later changes to the given mapping are not seen."""
    routes = {"$default": "D", "join": "J"}
    router = Router("$request.body.action", routes)
    routes["leave"] = "L"
    del routes["join"]
    assert router.select('{"action":"join"}') == ("join", "J")
    assert router.select('{"action":"leave"}') == ("$default", "D")
    with pytest.raises(AttributeError, match="Router is frozen; cannot set 'default'"):
        router.default = "other"
    with pytest.raises(AttributeError, match="Router is frozen; cannot delete 'connect'"):
        del router.connect


def test_router_can_be_parametrised() -> None:
    """``Router[T](...)`` works although instances refuse attribute assignment."""
    assert Router[int]("$request.body.action", {"a": 1}).select('{"action":"a"}') == ("a", 1)


def test_bad_expression_is_refused_by_the_router() -> None:
    """Router() raises the expression's ValueError."""
    with pytest.raises(ValueError, match=r"unbalanced '\$\{'"):
        Router("${request.body.action", ROUTES)


# --- bad expressions -------------------------------------------------------------------------


def _bad(expression: str, position: int, problem: str) -> tuple[str, str]:
    return expression, (
        f"invalid route selection expression {expression!r} at position {position}: {problem}"
    )


ONLY_BODY = "only request.body.<path> is available for message routing"
UNKNOWN = "unknown variable {!r}: " + ONLY_BODY


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "route selection expression must be a non-empty string: ''"),
        _bad("${request.body.action", 0, "unbalanced '${' (no closing '}')"),
        _bad("x/${request.body.a}/${request.body.b", 20, "unbalanced '${' (no closing '}')"),
        _bad("${}", 0, "empty '${}'"),
        _bad("${request.body}", 0, "expected ${request.body.<name>} (a path is required)"),
        _bad("${request.body[0]}", 0, "expected ${request.body.<name>} (a path is required)"),
        _bad("${request.body.}", 0, "malformed path '.' (empty name or bad [index])"),
        _bad("${request.body.a..b}", 0, "malformed path '.a..b' (empty name or bad [index])"),
        _bad("${request.body.a[x]}", 0, "malformed path '.a[x]' (empty name or bad [index])"),
        _bad("${request.body.a[-1]}", 0, "malformed path '.a[-1]' (empty name or bad [index])"),
        _bad("${request.body.${request.body.a}}", 0, "'$' and '{' are not allowed inside '${...}'"),
        _bad("$request.body", 0, "expected $request.body.<name> (a path is required)"),
        _bad("$request.body.", 0, "expected $request.body.<name> (a path is required)"),
        _bad("$request.body[0]", 0, "expected $request.body.<name> (a path is required)"),
        _bad("$request.header.x-api-key", 0, UNKNOWN.format("request.header.x-api-key")),
        _bad("${request.querystring.a}", 0, UNKNOWN.format("request.querystring.a")),
        _bad("${context.routeKey}", 0, UNKNOWN.format("context.routeKey")),
        _bad("$request.bodyx", 0, UNKNOWN.format("request.bodyx")),
        _bad("${ request.body.a }", 0, UNKNOWN.format(" request.body.a ")),
        _bad(
            "$default", 0, "unknown variable '$default'; write '\\$default' for the literal route"
        ),
        _bad("$", 0, "a bare '$' must be escaped as '\\$'"),
        _bad("cost: 5$", 7, "a bare '$' must be escaped as '\\$'"),
    ],
)
def test_bad_expressions_raise_value_error(expression: str, message: str) -> None:
    """Bad syntax and unknown variables raise ValueError naming the expression and position."""
    with pytest.raises(ValueError) as raised:
        SelectionExpression(expression)
    assert str(raised.value).startswith(message)


def test_expression_repr_shows_its_source() -> None:
    """repr() shows the expression as written."""
    assert repr(SelectionExpression("$request.body.action")) == (
        "SelectionExpression('$request.body.action')"
    )


# --- inputs that must never raise ------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_025, 50_000, 200_000])
def test_deep_nesting_goes_to_default(router: Router[str], depth: int) -> None:
    """Documents nested past 1024 levels go to $default (and never crash the process)."""
    assert router.select("[" * depth + "]" * depth) == ("$default", "D")
    assert router.select('{"a":' * depth + "1" + "}" * depth) == ("$default", "D")
    deep_member = '{"action":"join","x":' + "[" * depth + "]" * depth + "}"
    assert router.select(deep_member) == ("$default", "D")
    assert router.select(deep_member.encode()) == ("$default", "D")


def test_moderate_nesting_still_routes(router: Router[str]) -> None:
    """Nesting within orjson's limit (1024) parses and routes."""
    message = '{"action":"join","x":' + "[" * 500 + "]" * 500 + ',"z":"' + "[" * 2_000 + '"}'
    assert router.select(message) == ("join", "J")
    assert router.select(message.encode()) == ("join", "J")


@FUZZ
@given(st.text(max_size=64) | st.binary(max_size=64))
def test_arbitrary_frames_never_raise(message: str | bytes) -> None:
    """Any text or bytes selects a route or None, never raises."""
    possible = (("$default", "D"), ("join", "J"), ("chat/join", "CJ"), None)
    for router in (Router("$request.body.action", ROUTES), Router("$request.body.action", {})):
        assert router.select(message) in possible


def expected_route(action: Any) -> tuple[str, str]:
    """The route ROUTES gives a body whose ``action`` member is ``action``."""
    if isinstance(action, str) and action in ("join", "chat/join"):
        return action, ROUTES[action]
    return "$default", "D"


@FUZZ
@given(json_values, st.sampled_from(["join", "chat/join", "$connect", "nope"]))
def test_json_bodies_route_by_their_action(value: Any, action: str) -> None:
    """Any JSON document routes exactly as its ``action`` member says, else to $default."""
    router = Router("$request.body.action", ROUTES)
    own_action = value.get("action") if isinstance(value, dict) else None
    assert router.select(orjson.dumps(value)) == expected_route(own_action)
    assert router.select(orjson.dumps({"x": value, "action": action})) == expected_route(action)
    assert router.select(orjson.dumps({"action": value})) == expected_route(value)


@FUZZ
@given(json_values)
def test_fast_path_agrees_with_the_template_path(value: Any) -> None:
    """The single-key fast path and the general template stringify identically."""
    body = {"action": value, "a": {"b": value}}
    fast = evaluate("$request.body.action", body)
    assert evaluate("${request.body.action}|", body) == fast + "|"
    assert evaluate("$request.body.a.b", body) == fast
    assert isinstance(fast, str)


@pytest.mark.parametrize(
    ("expression", "key"),
    [("$request.body.action", "action"), ("${request.body.a-b}", "a-b"), ("$request.body.a.b", None),
     ("$request.body.a[0]", None), ("${request.body.action}|", None), ("action", None), ("a", None)],
)
def test_only_a_single_member_expression_is_read_inline(expression: str, key: str | None) -> None:
    """Router.select reads ``single_key`` itself: a plain member name, nothing else."""
    assert SelectionExpression(expression).single_key == key


@FUZZ
@given(st.text(alphabet="${}\\.[]0123456789 abrequstody-_x", max_size=40), json_values)
def test_any_expression_compiles_or_raises_value_error(expression: str, body: Any) -> None:
    """Any expression text either compiles or raises ValueError; evaluation returns text."""
    try:
        compiled = SelectionExpression(expression)
    except ValueError:
        return
    assert isinstance(compiled.evaluate(body), str)
    assert isinstance(compiled.evaluate({"request": body, "body": body, "x": body}), str)


def test_seeded_random_mutations_never_raise() -> None:
    """Random mutations of a routable frame (bytes flipped, cut, repeated) never raise."""
    rng = random.Random(20240601)
    router = Router("${request.body.service}/${request.body.action}", ROUTES)
    seed = b'{"service":"chat","action":"join","data":{"n":[1,2.5,true,null,"x"]}}'
    for _ in range(3_000):
        frame = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            if not frame:
                break
            position = rng.randrange(len(frame))
            choice = rng.random()
            if choice < 0.5:
                frame[position] = rng.randrange(256)
            elif choice < 0.75:
                del frame[position:]
            else:
                frame[position:position] = frame[position : position + 8] * rng.randint(1, 50)
        message = bytes(frame)
        assert router.select(message) in (("chat/join", "CJ"), ("$default", "D"))
        try:
            text = message.decode()
        except UnicodeDecodeError:
            continue
        assert router.select(text) == router.select(message)


def test_exports() -> None:
    """The module exports exactly its two public names."""
    assert routing.__all__ == ["Router", "SelectionExpression"]
