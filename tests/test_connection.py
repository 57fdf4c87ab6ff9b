"""A connection's bounded outbound queue, against a stand-in transport (no sockets)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from tests.test_hub import conn
from wsgateway.connection import encode_frame, plain_frame
from wsgateway.errors import GoneError, LimitExceededError


def test_send_limits_and_gone():
    c = conn("a")
    c.send(b"x" * 10, False, 1.0, limit=5)  # an empty queue always takes one message
    c.ws.transport.buffered = 4
    with pytest.raises(LimitExceededError):
        c.send(b"x" * 10, False, 2.0, limit=5)
    assert c.over_since == 2.0
    c.ws.protocol.state = State.CLOSING
    with pytest.raises(GoneError):
        c.send(b"x", False, 3.0, limit=5)


def test_slow_consumer_needs_to_stay_over_for_the_grace_period():
    c = conn("a")
    c.ws.transport.buffered = 100
    assert not c.check_queue(now=1.0, limit=50, grace=2.0)
    assert not c.check_queue(now=2.0, limit=50, grace=2.0)
    assert c.check_queue(now=3.5, limit=50, grace=2.0)
    c.ws.transport.buffered = 10  # drained in time: the clock resets
    assert not c.check_queue(now=4.0, limit=50, grace=2.0) and c.over_since is None


def test_info_reports_wall_clock_activity():
    c = conn("a")
    c.send(b"x", False, 2.5, limit=100)
    assert c.info().last_active_at == 1002.5 and c.info().record.connected_at == 1000.0


def test_replies_past_the_limit_stop_reading_until_drained():
    c = conn("a")
    c.ws.transport.buffered = 50  # at the limit: still read
    c.after_read(1.0, limit=50)
    assert c.ws.transport.reading and c.over_since is None
    c.ws.transport.buffered = 51  # pongs took it past: no more reading, the clock starts
    c.after_read(2.0, limit=50)
    assert not c.ws.transport.reading and c.reading_paused and c.over_since == 2.0
    c.after_read(3.0, limit=50)
    assert c.over_since == 2.0  # the clock runs from the first time
    assert c.check_queue(now=4.0, limit=50, grace=2.0)  # still over after the grace: cut off
    c.ws.transport.buffered = 24  # drained below half: read again
    assert not c.check_queue(now=4.5, limit=50, grace=2.0)
    assert c.ws.transport.reading and not c.reading_paused and c.over_since is None


def test_draining_leaves_websockets_own_read_pause_alone():
    c = conn("a")
    c.ws.transport.buffered = 51
    c.after_read(1.0, limit=50)
    c.ws.recv_messages.paused = True  # too many received messages wait for the read loop
    c.ws.transport.buffered = 0
    assert not c.check_queue(now=1.5, limit=50, grace=2.0)
    assert not c.ws.transport.reading and not c.reading_paused


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_plain_frame_is_websockets_own_serialization(binary: bool) -> None:
    """The frame Connection.send writes is byte for byte websockets' Frame.serialize."""
    for length in [*range(130), 200, 65535, 65536, 70000]:
        data = bytes(i % 251 for i in range(length))
        expected = Frame(Opcode.BINARY if binary else Opcode.TEXT, data).serialize(mask=False)
        assert plain_frame(data, binary) == expected, length
        assert encode_frame(data, binary) == expected, length
    assert plain_frame(bytearray(b"x"), binary) == plain_frame(b"x", binary)


def test_the_state_read_past_the_property_is_websockets_state() -> None:
    """Connection.send_frame and GatewayConnection.data_received read ``protocol._state``
    (a Python call less per frame): it must be what websockets' ``state`` property says,
    through every transition its protocol makes."""
    from websockets.server import ServerProtocol

    protocol = ServerProtocol()
    seen = [protocol._state is protocol.state]
    for state in (State.OPEN, State.CLOSING, State.CLOSED):
        protocol.state = state
        seen.append(protocol._state is protocol.state is state)
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    protocol.send_close(1000)  # websockets' own transition
    seen.append(protocol._state is protocol.state is State.CLOSING)
    assert all(seen)
