"""The gateway's frame reader against websockets' own: random byte streams, split at random.

The reader under test is what the client edge runs (``GatewayConnection.data_received`` and
``process_event``): a piece read while the parser waits for a new frame that is nothing but
whole data frames read by :func:`~wsgateway.reader.whole_messages`, any other piece fed to
websockets' sans-I/O ``ServerProtocol``, its data frames fed to
:class:`~wsgateway.reader.MessageReader`, the protocol failed with the reader's close code.
The reference is websockets alone: a fresh protocol fed the stream in one piece and its frames
put in websockets' asyncio ``Assembler`` and read back with ``get()``, the connection's
``recv()``, whose errors close as ``recv()`` does (1007 bad UTF-8, 1009 too many fragments).
Both must deliver the same messages, then close with the same code. Streams mix whole and
fragmented messages, pings and pongs between fragments, masked and unmasked frames, frames
past ``max_size``, invalid UTF-8, reserved bits, misplaced continuations, with and without
permessage-deflate. Plain ``random`` with fixed seeds, bounded to run in about a second.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from websockets.asyncio.messages import Assembler
from websockets.exceptions import TooManyFragments
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from wsgateway.reader import (
    MAX_FRAGMENTS,
    MessageReader,
    ReadError,
    between_frames,
    frame_size_limit,
    whole_messages,
)

MAX_SIZE = 1000
SEEDS = range(300)
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


@pytest.fixture(autouse=True, scope="module")
def _loop():  # type: ignore[no-untyped-def]
    """One loop for the reference's Assembler (it needs a running loop), for the module."""
    global _LOOP
    _LOOP = asyncio.new_event_loop()
    yield
    _LOOP.close()


_LOOP: asyncio.AbstractEventLoop


def _deflate() -> PerMessageDeflate:
    # Context takeover on both sides: a frame's decoding depends on every frame before it.
    return PerMessageDeflate(False, False, 15, 15)


def _server(deflate: bool) -> ServerProtocol:
    proto = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
    if deflate:
        proto.extensions = [_deflate()]
    return proto


# ---------------------------------------------------------------- streams


def _text(rng: random.Random) -> bytes:
    alphabet = "aé€😀{}\"\\ \n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 120))).encode()


def _bad_utf8(rng: random.Random) -> bytes:
    good = _text(rng)
    cut = rng.randrange(0, len(good) + 1)
    return good[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]) + good[cut:]


class _Client:
    """Serializes a client's frames, compressing data frames as its deflate extension does."""

    def __init__(self, rng: random.Random, deflate: bool) -> None:
        self.rng = rng
        self.extensions = [_deflate()] if deflate else []
        self.out: list[bytes] = []

    def frame(self, opcode: Opcode, data: bytes, *, fin: bool = True, masked: bool = True, rsv2: bool = False) -> None:
        extensions = self.extensions if opcode in _DATA else []
        # websockets refuses to serialize a fragmented control frame: set the bits afterwards.
        raw = bytearray(Frame(opcode, data, fin or opcode not in _DATA).serialize(mask=masked, extensions=extensions))
        if not fin and opcode not in _DATA:
            raw[0] &= 0x7F
        if rsv2:
            raw[0] |= 0x20
        self.out.append(bytes(raw))

    def control(self) -> None:
        if self.rng.random() < 0.3:
            self.frame(self.rng.choice([Opcode.PING, Opcode.PONG]), self.rng.randbytes(self.rng.randrange(0, 20)))


def _message(client: _Client, *, bad: bool) -> None:
    rng = client.rng
    text = rng.random() < 0.6
    if not text:
        data = rng.randbytes(rng.randrange(0, 200))
    elif bad:
        data = _bad_utf8(rng)
    else:
        data = _text(rng)
    if rng.random() < 0.5:  # whole
        client.control()
        client.frame(Opcode.TEXT if text else Opcode.BINARY, data)
        return
    cuts = sorted(rng.randrange(0, len(data) + 1) for _ in range(rng.randrange(1, 5)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    for i, piece in enumerate(pieces):
        opcode = (Opcode.TEXT if text else Opcode.BINARY) if i == 0 else Opcode.CONT
        client.frame(opcode, piece, fin=i == len(pieces) - 1)
        client.control()


def _violation(client: _Client) -> None:
    """One frame (or pair) a server must refuse, chosen at random."""
    rng = client.rng
    kind = rng.randrange(7)
    if kind == 0:
        client.frame(Opcode.TEXT, _text(rng), masked=False)  # a client's frames are masked
    elif kind == 1:
        client.frame(Opcode.BINARY, rng.randbytes(MAX_SIZE + rng.randrange(1, 50)))  # too big
    elif kind == 2:
        first = rng.randbytes(MAX_SIZE // 2 + 10)  # too big once its fragments add up
        client.frame(Opcode.BINARY, first, fin=False)
        client.frame(Opcode.CONT, first)
    elif kind == 3:
        client.frame(Opcode.CONT, b"stray")  # a continuation with nothing to continue
    elif kind == 4:
        client.frame(Opcode.TEXT, b"half", fin=False)  # a new message inside a fragmented one
        client.frame(Opcode.TEXT, b"other")
    elif kind == 5:
        client.frame(Opcode.TEXT, b"odd", rsv2=True)  # a reserved bit no extension uses
    else:
        client.frame(Opcode.PING, b"x", fin=False)  # a fragmented control frame


def _stream(seed: int, deflate: bool) -> bytes:
    rng = random.Random(seed)
    client = _Client(rng, deflate)
    for _ in range(rng.randrange(1, 12)):
        roll = rng.random()
        if roll < 0.08:
            _message(client, bad=True)
        elif roll < 0.14:
            _violation(client)
        else:
            _message(client, bad=False)
    if rng.random() < 0.3:
        client.frame(Opcode.CLOSE, b"\x03\xe8bye")
        if rng.random() < 0.5:
            _message(client, bad=False)  # after the close: discarded
    return b"".join(client.out)


def _splits(rng: random.Random, data: bytes) -> list[bytes]:
    pieces, at = [], 0
    while at < len(data):
        size = rng.choice([1, 1, 2, 3, rng.randrange(1, 64), rng.randrange(1, 4096)])
        pieces.append(data[at : at + size])
        at += size
    return pieces


# ---------------------------------------------------------------- the two readers


def _frame_splits(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Reads that end between frames (a few frames each), as most reads of a live client do."""
    pieces, at = [], 0
    while at < len(frames):
        count = rng.choice([1, 1, 2, 3])
        pieces.append(b"".join(frames[at : at + count]))
        at += count
    return pieces


def _gateway(pieces: list[bytes], deflate: bool, shortcuts: list[int] | None = None) -> tuple[list[str | bytes], int | None]:
    """The client edge's path: a piece of whole data frames read between frames goes to
    whole_messages, any other to the protocol, its data frames to the reader; ``shortcuts``
    gets the number of pieces whole_messages read."""
    proto, reader, messages = _server(deflate), MessageReader(), []
    failed = False
    between = False
    for piece in pieces:
        if between and proto.state is State.OPEN:
            whole = whole_messages(piece, frame_size_limit(proto))
            if whole is not None:
                messages.extend(whole)
                if shortcuts is not None:
                    shortcuts.append(1)
                continue
        proto.receive_data(piece)
        between = not failed and between_frames(proto)
        for event in proto.events_received():
            if failed or not isinstance(event, Frame) or event.opcode not in _DATA:
                continue
            try:
                message = reader.feed(event)
            except ReadError as exc:
                failed = True
                proto.fail(exc.code, exc.reason)
                continue
            if message is not None:
                messages.append(message)
    return messages, None if proto.close_sent is None else proto.close_sent.code


def _websockets(pieces: list[bytes], deflate: bool) -> tuple[list[str | bytes], int | None]:
    """websockets' asyncio connection: the protocol fed piece by piece, its frames put in
    its Assembler and each complete message read back with get(), as recv() does, which
    closes with 1007 or 1009 on what get() raises."""
    proto = _server(deflate)
    messages: list[str | bytes] = []

    async def run() -> None:
        assembler = Assembler(pause=lambda: None, resume=lambda: None)
        complete = 0  # messages whose last frame is in the assembler
        for piece in pieces:
            proto.receive_data(piece)
            for event in proto.events_received():
                if isinstance(event, Frame) and event.opcode in _DATA:
                    assembler.put(event)
                    complete += event.fin
            while complete:
                complete -= 1
                try:
                    messages.append(await assembler.get())
                except UnicodeDecodeError as exc:
                    proto.fail(CloseCode.INVALID_DATA, str(exc))
                    return
                except TooManyFragments:
                    proto.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                    return

    _LOOP.run_until_complete(run())
    return messages, None if proto.close_sent is None else proto.close_sent.code


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_random_splits_decide_as_websockets_does(deflate: bool) -> None:
    """Same messages as websockets reading the stream in one piece, whatever the split; the
    same close code as websockets reading the same pieces (it decides a piece's frame errors
    before its messages are read: a frame error after a bad message in the same read wins)."""
    closes: set[int | None] = set()
    for seed in SEEDS:
        stream = _stream(seed, deflate)
        whole = _websockets([stream], deflate)
        closes.add(whole[1])
        for split in range(3):
            pieces = _splits(random.Random(seed * 7 + split), stream)
            messages, code = _gateway(pieces, deflate)
            assert messages == whole[0], f"seed {seed}, split {split}"
            assert code == _websockets(pieces, deflate)[1], f"seed {seed}, split {split}"
            if split == 0:
                assert _gateway([stream], deflate) == whole, f"seed {seed}, in one piece"
    # The streams reach every decision: clean, 1000 echoed, protocol error, too big, bad UTF-8.
    assert {None, 1000, 1002, 1007, 1009} <= closes


def test_reads_that_end_between_frames_decide_as_websockets_does() -> None:
    """The same streams read a few whole frames at a time, as a live client's reads mostly
    are: whole_messages reads many of them, and the messages and close codes stay websockets'."""
    shortcuts: list[int] = []
    for seed in SEEDS:
        rng = random.Random(seed)
        client = _Client(rng, deflate=False)
        for _ in range(rng.randrange(1, 12)):
            roll = rng.random()
            if roll < 0.05:
                _message(client, bad=True)
            elif roll < 0.1:
                _violation(client)
            else:
                _message(client, bad=False)
        pieces = _frame_splits(rng, client.out)
        stream = b"".join(client.out)
        whole = _websockets([stream], deflate=False)
        assert _gateway(pieces, False, shortcuts) == (whole[0], _websockets(pieces, False)[1]), f"seed {seed}"
    assert len(shortcuts) > 150


def test_whole_messages_stands_for_the_parser_exactly() -> None:
    """Random reads (valid frames, then bytes flipped, cut or appended): whenever
    whole_messages reads one, websockets' protocol, waiting for a frame, makes of it exactly
    those data frames, final and whole, and nothing else: no reply, no close, still open and
    still between frames."""
    read = 0
    for seed in range(3000):
        rng = random.Random(seed)
        client = _Client(rng, deflate=False)
        for _ in range(rng.randrange(1, 4)):
            if rng.random() < 0.8:
                text = rng.random() < 0.6
                size = rng.choice([rng.randrange(0, 130), rng.randrange(120, MAX_SIZE + 20)])
                data = _text(rng) if text else rng.randbytes(size)
                client.frame(Opcode.TEXT if text else Opcode.BINARY, data, fin=rng.random() < 0.9)
            else:
                _message(client, bad=rng.random() < 0.3)
        data = bytearray(b"".join(client.out))
        for _ in range(rng.choice([0, 0, 1, 2])):
            roll = rng.random()
            if roll < 0.5 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif roll < 0.75:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += rng.randbytes(rng.randrange(1, 10))
        proto = _server(deflate=False)
        assert between_frames(proto)
        messages = whole_messages(bytes(data), frame_size_limit(proto))
        if messages is None:
            continue
        read += 1
        proto.receive_data(bytes(data))
        events = proto.events_received()
        assert all(isinstance(e, Frame) and e.fin and e.opcode in (Opcode.TEXT, Opcode.BINARY) for e in events)
        expected = [e.data.decode() if e.opcode is Opcode.TEXT else bytes(e.data) for e in events]
        assert messages == expected, f"seed {seed}"
        assert [type(m) for m in messages] == [type(m) for m in expected]
        assert proto.data_to_send() == [] and proto.close_sent is None and proto.state is State.OPEN
        assert between_frames(proto)
    assert read > 1000


def test_between_frames_only_while_the_parser_waits_for_a_frame() -> None:
    proto = _server(deflate=False)
    assert between_frames(proto)
    frame = Frame(Opcode.TEXT, b"hello").serialize(mask=True)
    proto.receive_data(frame[:3])  # inside a frame
    assert not between_frames(proto)
    proto.receive_data(frame[3:])
    assert between_frames(proto)
    proto.receive_data(Frame(Opcode.TEXT, b"half", fin=False).serialize(mask=True))  # inside a message
    assert not between_frames(proto)
    proto.receive_data(Frame(Opcode.CONT, b"end").serialize(mask=True))
    assert between_frames(proto)
    assert not between_frames(_server(deflate=True))
    proto.send_close(1000, "")
    assert not between_frames(proto)


def test_too_many_fragments_closes_with_1009_as_websockets_does() -> None:
    client = _Client(random.Random(0), deflate=False)
    client.frame(Opcode.TEXT, b"a", fin=False)
    for _ in range(MAX_FRAGMENTS):
        client.frame(Opcode.CONT, b"", fin=False)
    client.frame(Opcode.CONT, b"z")
    stream = b"".join(client.out)
    expected = _websockets([stream], deflate=False)
    assert expected == ([], 1009)
    assert _gateway(_splits(random.Random(1), stream), deflate=False) == expected


def test_a_message_just_under_the_fragment_limit_is_delivered() -> None:
    client = _Client(random.Random(0), deflate=False)
    client.frame(Opcode.BINARY, b"a", fin=False)
    for _ in range(MAX_FRAGMENTS - 2):
        client.frame(Opcode.CONT, b"", fin=False)
    client.frame(Opcode.CONT, b"c")
    stream = b"".join(client.out)
    expected = _websockets([stream], deflate=False)
    assert expected == ([b"ac"], None)
    assert _gateway(_splits(random.Random(2), stream), deflate=False) == expected


def test_the_reader_returns_str_for_text_and_bytes_for_binary() -> None:
    reader = MessageReader()
    assert reader.feed(Frame(Opcode.TEXT, "é".encode())) == "é"
    assert reader.feed(Frame(Opcode.BINARY, bytearray(b"\x00"))) == b"\x00"
    assert type(reader.feed(Frame(Opcode.BINARY, bytearray(b"\x00")))) is bytes
    assert reader.feed(Frame(Opcode.TEXT, b"\xc3", fin=False)) is None  # half a character
    assert reader.feed(Frame(Opcode.CONT, b"\xa9")) == "é"
    with pytest.raises(ReadError) as info:
        reader.feed(Frame(Opcode.TEXT, b"\xff"))
    assert (info.value.code, info.value.reason) == (1007, "invalid start byte at position 0")
