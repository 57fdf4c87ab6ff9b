"""What the reliable-connection tests share: a TCP link that cuts real connections, and a
client that speaks ``wsgateway.reliable.v1`` (websockets underneath).

:class:`CutLink` stands between clients and a gateway node, as a load balancer or a flaky
network does: ``cut()`` resets every connection through it at once (both ends see the TCP
connection die, no close frame), and ``target`` may be moved to another node (the next
connection lands there, as behind a load balancer).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Self
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection

from wsgateway.reliable import SUBPROTOCOL

__all__ = ["CutLink", "ReliableClient"]


class CutLink:
    """A TCP relay to ``127.0.0.1:target``; ``cut()`` resets every connection through it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.connections = 0  # how many were relayed, in total
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._relays, return_exceptions=True)

    def url(self, path: str = "/prod", **query: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{urlencode(query)}" if query else "")

    def cut(self) -> None:
        """The network dies: every connection through the link is reset at both ends."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
            self._writers |= {client_w, server_w}
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True)
        finally:
            self._relays.discard(relay)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


class ReliableClient:
    """One client session over successive sockets: it acknowledges (when ``auto_ack``),
    keeps ``lastSeq`` and resumes with it."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.ws: ClientConnection | None = None
        self.connection_id = ""
        self.token = ""
        self.last_seq = 0
        self.received: list[tuple[int, Any]] = []  # (seq, data) in order of arrival

    async def connect(self, url: str, *, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Open a socket (resuming this session when ``resume``); return the ``connected`` frame."""
        if resume:
            sep = "&" if "?" in url else "?"
            url += sep + urlencode({"resume": self.connection_id, "reconnectionToken": self.token,
                                    "lastSeq": self.last_seq})
        self.ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL, *kwargs.pop("subprotocols", [])],  # type: ignore[list-item]
                                           open_timeout=5, **kwargs)
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        assert hello["type"] == "connected", hello
        if not hello["resumed"]:
            self.last_seq = 0
        self.connection_id, self.token = hello["connectionId"], hello["reconnectionToken"]
        return dict(hello)

    async def recv(self, timeout: float = 5.0) -> tuple[int, Any]:
        """The next message: (seq, data); acknowledged at once when ``auto_ack``."""
        assert self.ws is not None
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert frame["type"] == "message", frame
        seq = frame["seq"]
        assert seq == self.last_seq + 1, f"seq {seq} after {self.last_seq}"
        self.last_seq = seq
        data = frame["data"]
        self.received.append((seq, data))
        if self.auto_ack:
            await self.ack(seq)
        return seq, data

    async def recv_many(self, count: int, timeout: float = 15.0) -> list[tuple[int, Any]]:
        """The next ``count`` messages, read one after the other (each within ``timeout``)."""
        return [await self.recv(timeout) for _ in range(count)]

    async def ack(self, seq: int) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": "ack", "seq": seq}))

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def close(self, code: int = 1000) -> None:
        if self.ws is not None:
            await self.ws.close(code)
