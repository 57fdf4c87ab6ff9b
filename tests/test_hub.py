"""Hub and connection queue accounting against a stand-in transport (no sockets)."""

from __future__ import annotations

import random

from websockets.protocol import State
from websockets.server import ServerProtocol

from wsgateway.connection import Connection, encode_frame
from wsgateway.hub import Hub
from wsgateway.records import ConnectionRecord


class Transport:
    """Records writes; ``buffered`` plays the kernel refusing to take more."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _open_protocol() -> ServerProtocol:
    """websockets' own protocol, open: the connection reads its state past the property."""
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    return protocol


class Messages:
    paused = False  # websockets' own pause, while too many messages wait for the read loop


class WS:
    def __init__(self) -> None:
        self.transport = Transport()
        self.protocol = _open_protocol()
        self.recv_messages = Messages()


def conn(cid: str, tenant: str = "t") -> Connection:
    rec = ConnectionRecord(cid, "n", tenant, "", 1000.0, "127.0.0.1", "")
    c = Connection(rec, 0.0, {})
    c.ws = WS()  # type: ignore[assignment]
    return c


def test_fanout_encodes_once_and_skips_full_and_closed():
    hub = Hub()
    a, b, c, other = conn("a"), conn("b"), conn("c"), conn("o", tenant="u")
    for x in (a, b, c, other):
        hub.add(x)
    b.ws.transport.buffered = 1000  # full
    c.close_code = 1000  # closing
    assert hub.fanout("t", b"hi", False, now=5.0, limit=1000) == 1
    frame = encode_frame(b"hi", False)
    assert a.ws.transport.written == [frame] and b.ws.transport.written == [] and c.ws.transport.written == []
    assert other.ws.transport.written == []
    assert b.over_since == 5.0 and a.last_active == 5.0


def test_hub_index_by_tenant():
    hub = Hub()
    a, b = conn("a"), conn("b", tenant="u")
    hub.add(a)
    hub.add(b)
    assert hub.get("a") is a and len(hub) == 2 and sorted(hub.tenants()) == ["t", "u"]
    assert hub.remove(a) and not hub.remove(a)
    assert hub.tenants() == ["u"] and hub.tenant_size("t") == 0


def deflate_conn(cid: str, window: int, no_context_takeover: bool = True) -> Connection:
    from websockets.extensions.permessage_deflate import PerMessageDeflate

    c = conn(cid)
    ws = WS()
    ws.protocol.extensions = [PerMessageDeflate(False, no_context_takeover, 15, window)]
    c.attach(ws, 0)  # type: ignore[arg-type]
    return c


def test_fanout_compresses_once_per_window_for_connections_without_context_takeover():
    from websockets.extensions.permessage_deflate import PerMessageDeflate
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    hub = Hub()
    a, b, c, plain = deflate_conn("a", 12), deflate_conn("b", 12), deflate_conn("c", 10), conn("p")
    for x in (a, b, c, plain):
        hub.add(x)
    assert a.shared_deflate is not None and plain.shared_deflate is None
    block = random.Random(7).randbytes(2000)
    data = block * 50  # repeats 2000 bytes apart: inside a 4 KB window (12 bits), past 1 KB (10)
    assert hub.fanout("t", data, False, now=1.0, limit=10**6) == 4
    [fa], [fb], [fc], [fp] = (x.ws.transport.written for x in (a, b, c, plain))
    assert fa is fb and fa != fc  # one compressed frame per window size
    assert fp == encode_frame(data, False)
    assert len(fa) < len(data) // 20 < len(fc) and fa[0] & 0x40 and fc[0] & 0x40  # RSV1: compressed
    for frame, window in ((fa, 12), (fc, 10)):  # each is what a client with that window decodes
        reader = StreamReader()
        reader.feed_data(frame)
        parser = Frame.parse(reader.read_exact, mask=False, extensions=[PerMessageDeflate(True, False, window, 15)])
        try:
            next(parser)
        except StopIteration as done:
            assert done.value.data == data
        else:
            raise AssertionError("frame incomplete")


def test_connection_with_context_takeover_is_not_shared():
    assert deflate_conn("a", 12, no_context_takeover=False).shared_deflate is None
