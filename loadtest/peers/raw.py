"""The raw ceilings: a minimal asyncio HTTP endpoint that sends the frame, and a raw RESP
PUBLISH/SUBSCRIBE relay doing the cross-node hop.

The clients' side is ``bare``'s (:class:`loadtest.peers.bare.BareNode`: websockets, the
HS256 token checked in the handshake, ``echo`` / ``whoami`` by ``action``, frames written
with ``websockets.broadcast``). What differs is everything a POST touches:

- the management paths are served by an ``asyncio.Protocol`` parsing with httptools, every
  answer of one read written at once: no framework, no routing table, no headers beyond
  ``Content-Length`` (``POST /@connections/{id}`` 200 or 410, ``POST
  /@tenants/{t}/messages`` ``{"delivered": n}``; anything else 404). This is the *minimal
  asyncio HTTP endpoint* the gateway's management POST is compared with (``unicast``);
- across nodes (``--redis-url``) a post to a connection of another node (its id starts with
  the owner's node id) is one ``PUBLISH`` to the owner's channel, packed by hiredis and
  written with the others of the same loop iteration on one connection, answered 200 at
  once (publish and forget: no reply, no 410 for a connection closed on the other node); the
  owner reads its channel on a second connection, parsed by hiredis straight from
  ``data_received``, and writes the frame. This is the *raw cross-node ceiling*
  (``crossnode``): the least a hop through Redis pub/sub can cost. Tenant messages go to
  one channel every node reads, as ``bare`` does.

It has none of the gateway's features (no SigV4, no AWS error bodies, no registry, no
limits, no answer from the owner). Run: ``python -m loadtest.peers.raw --ready-file PATH
[--jwt-secret S] [--redis-url URL]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import httptools
import orjson
from websockets.asyncio.server import broadcast, serve

from loadtest.peers.bare import BareNode
from loadtest.peers.contract import parse_args, write_ready

__all__ = ["RawNode", "main"]

_TENANTS_CHANNEL = b"lt:tenants"
_BACKLOG = 2048
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_GONE = b"HTTP/1.1 410 Gone\r\nx-amzn-ErrorType: GoneException\r\nContent-Length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment,unused-ignore]


class _Resp(asyncio.Protocol):
    """One RESP connection: commands of one loop iteration leave in one write; what comes
    back is parsed by hiredis and handed to ``on_reply`` (PUBLISH counts, pushed messages)."""

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self._on_reply = on_reply
        self._reader = hiredis.Reader()
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        gets, on_reply = self._reader.gets, self._on_reply
        while (reply := gets()) is not False:
            on_reply(reply)

    def send(self, command: bytes) -> None:
        out = self._out
        out.append(command)
        if len(out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()


class RawNode(BareNode):
    """A bare node whose POSTs go through the minimal HTTP endpoint and the raw relay."""

    def __init__(self, node_id: str, secret: str) -> None:
        super().__init__(node_id, secret)
        self.outbox: _Resp | None = None
        self._channels: dict[str, bytes] = {}

    async def connect_bus(self, redis_url: str) -> None:
        """Open the publishing connection and subscribe to this node's channel and the
        tenants' channel; returns once subscribed."""
        url = urlsplit(redis_url)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        loop = asyncio.get_running_loop()
        _, self.outbox = await loop.create_connection(lambda: _Resp(_ignore), host, port)
        subscribed = loop.create_future()

        def on_push(reply: Any) -> None:
            if reply[0] == b"message":
                self.on_bus(reply[1], reply[2])
            elif reply[0] == b"subscribe" and reply[2] == 2 and not subscribed.done():
                subscribed.set_result(None)

        _, inbox = await loop.create_connection(lambda: _Resp(on_push), host, port)
        inbox.send(_pack((b"SUBSCRIBE", f"lt:node:{self.node_id}".encode(), _TENANTS_CHANNEL)))
        await asyncio.wait_for(subscribed, 10)

    def on_bus(self, channel: bytes, data: bytes) -> None:
        """A message another node PUBLISHed: a post to one of ours, or a tenant's message."""
        if channel == _TENANTS_CHANNEL:
            origin, tenant, body = data.split(b"\n", 2)
            if origin.decode() != self.node_id:
                broadcast(self.tenants.get(tenant.decode(), ()), body, text=True)
        else:
            cid, body = data.split(b"\n", 1)
            self.deliver(cid.decode(), body)

    def answer(self, path: str, body: bytes) -> bytes:
        """The whole HTTP response to ``POST path`` with ``body``."""
        if path.startswith("/@connections/"):
            cid = unquote(path[14:])
            if self.deliver(cid, body):
                return _OK
            owner = cid.partition(".")[0]
            if self.outbox is not None and owner != self.node_id:
                self.outbox.send(_pack((b"PUBLISH", self._channel(owner), cid.encode() + b"\n" + body)))
                return _OK
            return _GONE
        if path.startswith("/@tenants/") and path.endswith("/messages"):
            tenant = unquote(path[10:-9])
            local = self.tenants.get(tenant, ())
            broadcast(local, body, text=True)
            if self.outbox is not None:
                head = f"{self.node_id}\n{tenant}\n".encode()
                self.outbox.send(_pack((b"PUBLISH", _TENANTS_CHANNEL, head + body)))
            answer = orjson.dumps({"delivered": len(local)})
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(answer), answer)
        return _NOT_FOUND

    def _channel(self, node_id: str) -> bytes:
        name = self._channels.get(node_id)
        if name is None:
            name = self._channels[node_id] = f"lt:node:{node_id}".encode()
        return name


class _Http(asyncio.Protocol):
    """One management connection: requests parsed by httptools, answered in order, the
    answers to one read written at once."""

    def __init__(self, node: RawNode) -> None:
        self._node = node
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._out.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._write()
            assert self._transport is not None
            self._transport.close()
            return
        self._write()

    def _write(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.partition(b"?")[0].decode()
        body = b"".join(self._body)
        self._url, self._body = b"", []
        self._out.append(self._node.answer(path, body))


def _ignore(reply: Any) -> None:
    """PUBLISH counts: publish and forget."""


async def _main() -> None:
    args = parse_args("raw HTTP endpoint and RESP relay ceiling")
    node = RawNode(args.node_id, args.jwt_secret)
    if args.redis_url:
        await node.connect_bus(args.redis_url)
    loop = asyncio.get_running_loop()
    http = await loop.create_server(lambda: _Http(node), args.host, args.management_port,
                                    reuse_port=args.reuse_port or None, backlog=_BACKLOG)
    mport = http.sockets[0].getsockname()[1]
    async with serve(
        node.handler, args.host, args.port, process_request=node.process_request,
        compression="deflate" if args.compression else None, reuse_port=args.reuse_port or None, backlog=_BACKLOG,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gc.collect()  # as bare and wsgateway's cli
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        write_ready(args.ready_file, args.node_id, port, mport)
        await server.serve_forever()


def main() -> None:
    """Run the node until it is killed (SIGTERM / SIGINT)."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main())


if __name__ == "__main__":
    main()
