"""What the load generator puts on the wire, for both client dialects: pure functions.

Every measured message carries the sender's ``time.monotonic_ns()`` as ``"t"`` (CLOCK_MONOTONIC
is shared by all processes on Linux, so a receiver in another process can subtract it) and a
sequence number ``"seq"``; ``"pad"`` brings it to the requested size (200 bytes by default,
as in ``docs/performance.md``).

Three dialects:

* ``plain``: JSON text frames; a client message names its route in ``"action"`` (wsgateway,
  bare, Django Channels); a pushed message is the management POST's body, verbatim.
* ``socketio``: Engine.IO v4 / Socket.IO v5 packets over a raw WebSocket (python-socketio and
  Socket.IO on Node.js); the action is the event name and the JSON text travels as the event's
  single string argument. Packets are built and parsed by python-socketio's own codecs.
* ``reliable``: wsgateway's ``wsgateway.reliable.v1`` subprotocol: client frames as ``plain``;
  the first pushed frame is ``{"type":"connected","connectionId":...}`` and every later one an
  envelope ``{"type":"message","seq":N,"data":TEXT}``, acknowledged with ``{"type":"ack","seq":N}``.
"""

from __future__ import annotations

from typing import Literal

import orjson

__all__ = [
    "PING",
    "RELIABLE_SUBPROTOCOL",
    "Dialect",
    "ack_frame",
    "action_frame",
    "body",
    "connect_ack_sid",
    "envelope",
    "payload",
    "read_stamp",
    "whoami_frame",
]

Dialect = Literal["plain", "socketio", "reliable"]

RELIABLE_SUBPROTOCOL = "wsgateway.reliable.v1"

PING = object()
"""Returned by :func:`payload` for a Socket.IO ping: the caller answers with ``"3"``."""

def body(t_ns: int, seq: int, size: int, action: str | None = None) -> str:
    """Return a JSON message of about ``size`` bytes stamped with ``t_ns`` and ``seq``."""
    head = f'{{"action":"{action}",' if action is not None else "{"
    text = f'{head}"t":{t_ns},"seq":{seq},"pad":"'
    # Built by hand, not by orjson: the fields are ints and a fixed-alphabet pad, and this
    # runs once per message in the generator.
    return text + "x" * max(0, size - len(text) - 2) + '"}'



def read_stamp(text: str | bytes | bytearray) -> tuple[int, int]:
    """Return ``(t_ns, seq)`` from a stamped message; raises ``ValueError`` / ``KeyError``."""
    msg = orjson.loads(text)
    return msg["t"], msg.get("seq", -1)


def action_frame(dialect: Dialect, action: str, text: str) -> str:
    """Return the frame a client sends to run ``action`` with ``text`` (already stamped).

    In the plain dialect ``text`` must already name the action (see :func:`body`).
    """
    if dialect != "socketio":
        return text
    # Engine.IO MESSAGE "4" + Socket.IO EVENT "2" in the default namespace, no ack id: the
    # one packet shape the generator sends, which python-socketio's codec writes the same way
    # (checked in tests); built directly because it runs once per message.
    return "42" + orjson.dumps([action, text]).decode()


def whoami_frame(dialect: Dialect) -> str:
    """Return the frame that asks the server for this connection's id (plain dialect only)."""
    if dialect != "plain":
        raise ValueError("socket.io clients learn their id from the CONNECT ack")
    return '{"action":"whoami"}'


def payload(dialect: Dialect, frame: str | bytes | bytearray) -> str | bytes | bytearray | object | None:
    """Return the application text inside a received frame.

    Returns :data:`PING` for an Engine.IO ping and ``None`` for any other control packet or
    a packet that does not parse.
    """
    if dialect == "plain":
        return frame
    if dialect == "reliable":
        try:
            return envelope(frame)[1]
        except (ValueError, KeyError, TypeError):
            return None
    if not isinstance(frame, str):
        frame = bytes(frame).decode()
    if frame == "2":
        return PING
    try:
        if frame.startswith("42["):
            data = orjson.loads(frame[2:])  # the fast path for the shape servers push (see above)
        elif frame.startswith("42"):
            from socketio import packet as sio

            data = sio.Packet(encoded_packet=frame[1:]).data  # namespaces, ack ids: the library
        else:
            return None
    except ValueError:
        return None
    return data[1] if isinstance(data, list) and len(data) > 1 else None


def envelope(frame: str | bytes | bytearray) -> tuple[int, str]:
    """Return ``(seq, data)`` of a reliable message envelope; raises ``ValueError``,
    ``KeyError`` or ``TypeError`` for anything else (the ``connected`` frame included)."""
    msg = orjson.loads(frame)
    return msg["seq"], msg["data"]


def ack_frame(seq: int) -> str:
    """Return the frame acknowledging every reliable message up to ``seq``."""
    return f'{{"type":"ack","seq":{seq}}}'


def connect_ack_sid(frame: str | bytes) -> str:
    """Return the socket id from a Socket.IO CONNECT ack (``40{"sid":...}``).

    Raises ``ValueError`` for anything else (for example a CONNECT_ERROR ``44...``).
    """
    if isinstance(frame, bytes):
        frame = frame.decode()
    if not frame.startswith("40"):
        raise ValueError(f"not a socket.io CONNECT ack: {frame[:80]!r}")
    return str(orjson.loads(frame[2:])["sid"])
