"""The ``wsgateway.reliable.v1`` wire format (``wsgateway.reliable.protocol``): pure, no sockets."""

from __future__ import annotations

import base64
import json

import pytest
from websockets.frames import Frame, Opcode

from wsgateway.reliable.protocol import (
    ResumeRequest,
    connected_frame,
    message_frame,
    new_token,
    parse_ack,
    parse_resume,
    same_token,
    text_frame,
)


def test_connected_frame() -> None:
    assert json.loads(connected_frame("abc", "tok", False)) == {
        "type": "connected", "connectionId": "abc", "reconnectionToken": "tok", "resumed": False,
    }


@pytest.mark.parametrize("text", ["plain", 'quotes " and \\ backslash', "ünïcödé ✓", "line\nbreak\u2028", ""])
def test_text_messages_carry_the_posted_string(text: str) -> None:
    frame = message_frame(7, text.encode(), False)
    assert json.loads(frame) == {"type": "message", "seq": 7, "data": text}


def test_binary_messages_carry_base64() -> None:
    data = bytes(range(256))
    frame = json.loads(message_frame(1, data, True))
    assert frame["encoding"] == "base64" and frame["seq"] == 1
    assert base64.b64decode(frame["data"]) == data


@pytest.mark.parametrize(("message", "seq"), [
    ('{"type":"ack","seq":5}', 5),
    ('{ "type" : "ack", "seq" : 0 }', 0),
    ('{"seq":12,"type":"ack"}', 12),
    ('{"type":"ack","seq":7}' + " " * 200, 7),  # however long: any object whose type is "ack"
    ('{"type":"ack","seq":1,"padding":"' + "x" * 200 + '"}', 1),
    ('{"type":"\\u0061ck","seq":3}', 3),  # "ack" spelt with an escape
    ('{"type":"ack","seq":4,"n":' + "9" * 4301 + "}", 4),  # a member no JSON library here reads as a number
])
def test_acks_are_recognised_however_spaced(message: str, seq: int) -> None:
    assert parse_ack(message) == seq


@pytest.mark.parametrize("message", [
    '{"action":"ack"}',  # a route that happens to be called ack
    '{"type":"message","seq":1}',
    'not json "ack"',
    '["ack", 1]',
    b'{"type":"ack","seq":1}',  # binary frames are never acks
    '{"type":"\\u0061cks","seq":1}',
    'not json \\u0061ck',
    '{"type":"ack","seq":1,}',  # not JSON: routed, as the router reads it too
])
def test_other_frames_are_not_acks(message: str | bytes) -> None:
    assert parse_ack(message) is None


@pytest.mark.parametrize("message", [
    '{"type":"ack","seq":-1}', '{"type":"ack","seq":"3"}', '{"type":"ack","seq":1.5}', '{"type":"ack"}',
    '{"type":"ack","seq":true}', '{"type":"ack","seq":9007199254740992}',
    '{"type":"ack","seq":1e400}',  # JSON, though orjson refuses a number past a double's range
    '{"type":"ack","seq":1e400}' + " " * 200,
    '{"type":"ack","seq":99999999999999999999999}',
    '{"type":"ack","seq":' + "9" * 4301 + "}",  # past what int() reads from text: still an ack, never routed
])
def test_malformed_acks_raise(message: str) -> None:
    with pytest.raises(ValueError):
        parse_ack(message)


def test_resume_requests() -> None:
    assert parse_resume({"tenant": "t"}) is None
    assert parse_resume({"resume": "id", "reconnectionToken": "t", "lastSeq": "4"}) == ResumeRequest("id", "t", 4)
    assert parse_resume({"resume": "id", "reconnectionToken": "t"}) == ResumeRequest("id", "t", 0)
    for bad in ({"resume": "id"}, {"resume": "id", "reconnectionToken": "t", "lastSeq": "-1"},
                {"resume": "id", "reconnectionToken": "t", "lastSeq": "1e3"},
                {"resume": "id", "reconnectionToken": "t", "lastSeq": "9" * 17},
                {"resume": "id", "reconnectionToken": "t", "lastSeq": "\u00b2"},  # isdigit(), not int()
                {"resume": "id", "reconnectionToken": "t", "lastSeq": "\u0661"},  # Arabic-Indic one
                {"resume": "A" * 129, "reconnectionToken": "t"},  # longer than any connection id
                {"resume": "id\nFORGED LOG LINE", "reconnectionToken": "t"},
                {"resume": "\x00", "reconnectionToken": "t"}):
        assert parse_resume(bad) is None, bad


def test_tokens_are_fresh_and_compared_exactly() -> None:
    one, two = new_token(), new_token()
    assert one != two and len(one) == 32
    assert same_token(one, one) and not same_token(one, two) and not same_token(one, one[:-1])


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_are_what_websockets_writes(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_fan_out_escapes_its_data_once_and_each_message_alone() -> None:
    shared = b'{"quote":"\\""}'
    first, second = message_frame(1, shared, False), message_frame(2, shared, False)
    assert json.loads(first)["data"] == json.loads(second)["data"] == shared.decode()
    other = b'{"quote":"\\""}'[:-1] + b"}"  # equal bytes, another object: escaped again, same result
    assert json.loads(message_frame(3, other, False))["data"] == shared.decode()
    assert json.loads(message_frame(4, shared, True))["encoding"] == "base64"  # binary is not text's cache
    assert "encoding" not in json.loads(message_frame(5, shared, False))
