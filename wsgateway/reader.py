"""Client frames -> messages, without awaiting anything: the read side of the client edge.

websockets' sans-I/O protocol parses the bytes into frames (masking, sizes, control frames,
the closing handshake, permessage-deflate); its asyncio layer then queues every data frame in
an ``Assembler`` that a task awaits, one wake-up per message. :class:`MessageReader` does
that layer's assembly synchronously instead, with the same decisions: fragments are joined
when the last one arrives, a text message is decoded then (invalid UTF-8 closes with 1007),
and a message of more than ``MAX_FRAGMENTS`` frames closes with 1009 ("too many fragments").
The frame sizes (1009 past ``max_size``) and fragment order (1002) are the protocol's checks.

Pure logic: no socket, no loop. ``tests/test_reader.py`` feeds it random splits of byte
streams and compares its messages and close codes with websockets' own assembler.

:func:`whole_messages` is the common read's shortcut past the protocol's parser, a generator
resumed a dozen times per frame: a read of nothing but whole, final, masked text or binary
frames within the size limit, valid UTF-8, read while the parser waits for a new frame
(:func:`between_frames`), is exactly what the parser would turn into those data frames with
nothing else to do (no state change, no reply, no event but the frames). Anything else (a
control frame, a fragment, a frame cut by the read, a reserved bit, an oversized frame, bad
UTF-8, an extension, debug logging) is left to websockets, whole read included.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

try:  # as websockets.frames: its C unmasking, else its Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["MAX_FRAGMENTS", "MessageReader", "ReadError", "between_frames", "frame_size_limit", "whole_messages"]

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_OPEN = State.OPEN
_AT_EOF = StreamReader.at_eof.__code__
# First header byte of a final text / binary frame, no reserved bit; a client's are masked.
_FIN_TEXT, _FIN_BINARY, _MASKED = 0x80 | _TEXT, 0x80 | _BINARY, 0x80


class ReadError(Exception):
    """A message that must close the connection: ``code`` and ``reason`` for the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MessageReader:
    """Joins one connection's data frames into messages (``str`` for text, ``bytes`` else).

    Feed it the data frames websockets' protocol emitted, in order, with :meth:`feed`; it
    returns the message a frame completes, or None while a fragmented one goes on.
    """

    __slots__ = ("_frames", "_text")

    def __init__(self) -> None:
        self._frames: list[bytes | bytearray | memoryview] = []  # fragments of the message in progress
        self._text = False

    def feed(self, frame: Frame) -> str | bytes | None:
        """The message ``frame`` (TEXT, BINARY or CONT) completes, else None.

        Raises :class:`ReadError` (1007 invalid UTF-8, 1009 too many fragments); the reader
        must not be fed again after that. The protocol has already refused a continuation
        frame out of place, so fragments arrive in a valid order.
        """
        opcode = frame.opcode
        if frame.fin and opcode is not _CONT:  # the common case: a whole message
            if opcode is not _TEXT:
                return bytes(frame.data)
            try:  # _decode, inline: this runs for every message
                return str(frame.data, "utf-8")
            except UnicodeDecodeError as exc:
                raise ReadError(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}") from None
        frames = self._frames
        if opcode is not _CONT:
            self._text = opcode is _TEXT
        elif len(frames) >= MAX_FRAGMENTS:
            raise ReadError(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
        frames.append(frame.data)
        if not frame.fin:
            return None
        data = b"".join(frames)
        frames.clear()
        return _decode(data) if self._text else data


def _decode(data: bytes | bytearray | memoryview) -> str:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise ReadError(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}") from None


def frame_size_limit(protocol: Protocol) -> int | None:
    """The largest frame ``protocol`` accepts outside a fragmented message (None: any), as its
    parser computes it with no message in progress."""
    limit = protocol.max_message_size
    fragment = protocol.max_fragment_size
    if fragment is not None:
        limit = fragment if limit is None else min(limit, fragment)
    return limit


def between_frames(protocol: Protocol) -> bool:
    """Whether :func:`whole_messages` may stand for ``protocol``'s parser on the next read:
    the connection is open, no extension and no debug log, no fragmented message under way,
    and the parser is suspended waiting for a new frame (the innermost generator it delegates
    to is its reader's ``at_eof``, which suspends only with its buffer empty). Anything else,
    websockets' generators included if they change shape, answers False: the safe side."""
    if protocol.state is not _OPEN or protocol.extensions or protocol.debug or protocol.current_size is not None:
        return False
    gen: Any = protocol.parser  # a generator: gi_yieldfrom and gi_code are public (see inspect)
    while (inner := gen.gi_yieldfrom) is not None:
        gen = inner
    return gen.gi_code is _AT_EOF


def whole_messages(data: bytes, max_size: int | None) -> list[str | bytes] | None:
    """The messages of ``data`` if it is nothing but whole, final, masked text and binary
    frames, none bigger than ``max_size`` (:func:`frame_size_limit`), text valid UTF-8; else
    None, and the read goes to websockets. Call only when :func:`between_frames` holds."""
    messages: list[str | bytes] = []
    at, end = 0, len(data)
    while at < end:
        if end - at < 6:  # the shortest masked frame: 2 header bytes, 4 mask bytes
            return None
        head1 = data[at]
        length = data[at + 1] - _MASKED
        if (head1 != _FIN_TEXT and head1 != _FIN_BINARY) or length < 0:
            return None
        at += 2
        if length == 126:  # two bytes of length, read without slicing them out
            length = data[at] << 8 | data[at + 1]
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8])
            at += 8
        stop = at + 4 + length
        if (max_size is not None and length > max_size) or stop > end:
            return None
        payload = apply_mask(data[at + 4 : stop], data[at : at + 4])
        at = stop
        if head1 == _FIN_BINARY:
            messages.append(payload)
            continue
        try:  # decode(), not str(payload, "utf-8"): no keyword parsing per message
            messages.append(payload.decode())
        except UnicodeDecodeError:
            return None  # websockets' path closes it with 1007, as for any read
    return messages
