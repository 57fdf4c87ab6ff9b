"""One JSON line per connect, message, disconnect and management call.

Fields: ``time`` (ISO-8601 UTC), ``kind`` (connect / message / disconnect / management),
``requestId``, ``connectionId``, ``routeKey`` (for management calls the operation, e.g.
``PostToConnection``, or the method when none was named), ``status`` (HTTP status, or the close
code for a disconnect), ``latency_ms``, ``tenant``, ``sourceIp``, ``userAgent`` (connect lines
and management calls), and for management calls ``method``. Never the token, never a message
body. Strings a client chose are cut to 256 characters (ending in ``...[truncated]``),
so a client cannot make its lines cost more than their share of the log.

Lines are buffered and written at most every 200 ms or every 64 KiB, so logging a message
costs one ``orjson.dumps`` and no system call on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import IO, Any

import orjson

from .records import ConnectionRecord

__all__ = ["AccessLog", "bounded"]

_FLUSH_BYTES = 65536
_FLUSH_INTERVAL_S = 0.2
_MAX_CHARS = 256  # per client-supplied string (User-Agent may be 8 KB)
_TRUNCATED = "...[truncated]"


def bounded(value: str) -> str:
    """``value``, or its first characters and ``_TRUNCATED`` if it is over ``_MAX_CHARS``."""
    if len(value) <= _MAX_CHARS:
        return value
    return value[: _MAX_CHARS - len(_TRUNCATED)] + _TRUNCATED


def _iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class AccessLog:
    """Buffered JSON-lines writer; ``target`` is "-" (stdout), "" (off) or a file path."""

    def __init__(self, target: str) -> None:
        self.enabled = target != ""
        self._stream: IO[bytes] | None = None
        self._owned = False
        if target == "-":
            self._stream = sys.stdout.buffer
        elif target:
            self._stream = open(target, "ab")  # noqa: SIM115 - closed in close()
            self._owned = True
        self._buffer: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None

    def write(self, kind: str, **fields: Any) -> None:
        """Log one entry. Call from the event loop; cheap when disabled."""
        if not self.enabled:
            return
        fields["time"] = _iso_now()
        fields["kind"] = kind
        line = orjson.dumps(fields) + b"\n"
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def connection_event(
        self,
        kind: str,
        *,
        route_key: str,
        status: int,
        request_id: str,
        started: float | None,
        record: ConnectionRecord | None = None,
        source_ip: str = "",
        user_agent: str = "",
        **extra: Any,
    ) -> None:
        """Log one connect, message or disconnect of ``record`` (None: a handshake refused
        before the connection existed, known only by ``source_ip`` and ``user_agent``).

        ``started`` is the ``time.perf_counter()`` reading when the event began (None: no
        latency to report, 0.0 is written); ``status`` is the HTTP status, or the close code
        of a disconnect. The one place these lines are built, so every kind has the same fields
        but ``userAgent``, which only ``connect`` lines carry: repeated on every message it let
        an 8 KB header multiply the log ~1000 times. Every string is bounded (see ``bounded``).
        """
        if not self.enabled:
            return
        if record is not None:
            connection_id, tenant = record.connection_id, record.tenant
            source_ip, user_agent = record.source_ip, record.user_agent
        else:
            connection_id = tenant = ""
        latency = 0.0 if started is None else round((time.perf_counter() - started) * 1000, 3)
        fields: dict[str, Any] = {
            "requestId": request_id,
            "connectionId": connection_id,
            "routeKey": bounded(route_key),
            "status": status,
            "latency_ms": latency,
            "tenant": bounded(tenant),
            "sourceIp": bounded(source_ip),
        }
        if kind == "connect":
            fields["userAgent"] = bounded(user_agent)
        for name, value in extra.items():
            fields[name] = bounded(value) if isinstance(value, str) else value
        self.write(kind, **fields)

    def flush(self) -> None:
        if not self._buffer or self._stream is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or full stdout must not take the node down
            self.enabled = False

    def start(self) -> None:
        """Begin flushing periodically on the running loop."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL_S)
            self.flush()

    async def close(self) -> None:
        """Flush what is buffered and stop; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
            self._stream = None
            self._owned = False
