"""The ``wsgateway.reliable.v1`` wire format: pure functions, no I/O.

Gateway to client, as text frames::

    {"type":"connected","connectionId":ID,"reconnectionToken":T,"resumed":false}   first frame
    {"type":"message","seq":N,"data":STRING}                                       every later one
    {"type":"message","seq":N,"data":BASE64,"encoding":"base64"}                   binary data

Client to gateway: ``{"type":"ack","seq":N}`` (cumulative, never routed); every other frame is
routed as on a plain connection. A resume is a new handshake with the query parameters
``resume=ID&reconnectionToken=T&lastSeq=N``.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ..ids import is_connection_id

__all__ = [
    "SUBPROTOCOL",
    "ResumeRequest",
    "connected_frame",
    "message_frame",
    "new_token",
    "parse_ack",
    "parse_resume",
    "same_token",
    "text_frame",
]

SUBPROTOCOL = "wsgateway.reliable.v1"
_SEQ_MAX = 2**53 - 1  # what a JavaScript number holds exactly


def new_token() -> str:
    """A fresh reconnection token: 192 random bits, URL-safe (it travels in a query string)."""
    return secrets.token_urlsafe(24)


def same_token(given: str, expected: str) -> bool:
    """Compare tokens in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def connected_frame(connection_id: str, token: str, resumed: bool) -> bytes:
    """The first frame on every reliable socket."""
    return orjson.dumps(
        {"type": "connected", "connectionId": connection_id, "reconnectionToken": token, "resumed": resumed}
    )


# The data of the last message enveloped, and its JSON form: a fan-out hands the same bytes
# object to every reliable connection of the audience, so it is escaped once per fan-out.
_last: tuple[bytes, bool, bytes] = (b"", False, b'""')


def message_frame(seq: int, data: bytes, binary: bool) -> bytes:
    """One message's envelope: UTF-8 ``data`` as a JSON string, other bytes in base64."""
    global _last
    last_data, last_binary, escaped = _last
    if data is not last_data or binary is not last_binary:
        escaped = orjson.dumps(base64.b64encode(data).decode() if binary else data.decode())
        _last = (data, binary, escaped)
    if binary:
        return b'{"type":"message","seq":%d,"data":%b,"encoding":"base64"}' % (seq, escaped)
    return b'{"type":"message","seq":%d,"data":%b}' % (seq, escaped)


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, unfragmented WebSocket text frame (RFC 6455 5.2).

    What ``websockets.frames.Frame.serialize`` writes for such a frame, in a seventh of its
    time: every message of a reliable session is framed on its own (its seq differs).
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEAD16.pack(0x81, 126, n) + payload
    return _HEAD64.pack(0x81, 127, n) + payload


_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


def parse_ack(message: str | bytes) -> int | None:
    """The ``seq`` of an ack: a text frame that is a JSON object whose ``"type"`` is ``"ack"``,
    however long or spaced; None for any other frame (it is then routed).

    Raises ValueError for an ack whose ``seq`` is not a non-negative integer.
    """
    # Every frame of a reliable connection comes here: one that cannot be such an object is
    # not parsed (the router parses it). Such an object spells "ack" as is or with a \u
    # escape; one memchr for a backslash rules escapes out. A frame of any length is read
    # (a padded ack is still one): the scan costs about what the router's parse of it does.
    if not isinstance(message, str) or ('"ack"' not in message and ("\\" not in message or "\\u" not in message)):
        return None
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        frame = _json_value(message)
    if type(frame) is not dict or frame.get("type") != "ack":
        return None
    seq = frame.get("seq")
    if type(seq) is not int or not 0 <= seq <= _SEQ_MAX:
        raise ValueError("an ack's seq must be a non-negative integer")
    return seq


def _json_value(message: str) -> object:
    """``message`` as the standard library reads JSON (None if it cannot): it takes what orjson
    refuses of an object, as a number out of a double's range (``1e400``), so that such an ack
    is answered as invalid instead of reaching a route."""
    try:
        return json.loads(message, parse_int=_json_int)
    except (ValueError, RecursionError):
        return None


def _json_int(digits: str) -> int:
    """A JSON integer; one longer than any seq (which int() would refuse past 4300 digits, or
    take quadratic time over) as -1, which no seq is: such an ack is invalid, not routed."""
    return int(digits) if len(digits) <= 20 else -1


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """What a resuming handshake asks for."""

    connection_id: str
    token: str
    last_seq: int


def parse_resume(query: Mapping[str, str]) -> ResumeRequest | None:
    """The resume a handshake's query asks for; None if it asks for none, or for one it
    cannot be (an id no connection has the shape of, missing token, ``lastSeq`` not a
    non-negative integer): that client starts afresh and is told so (``"resumed": false``).
    The id is the client's text: checked here, it is never looked up nor logged unless it is
    at most 128 characters that cannot break a log line."""
    connection_id = query.get("resume")
    if not connection_id or not is_connection_id(connection_id):
        return None
    token = query.get("reconnectionToken", "")
    last = query.get("lastSeq", "0")
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses (a 500 and a traceback).
    if not token or not last.isascii() or not last.isdigit() or len(last) > 16:
        return None
    return ResumeRequest(connection_id, token, int(last))
