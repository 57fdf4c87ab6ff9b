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
  one channel every node reads, as ``bare`` does;
- with ``acked`` (``python -m loadtest.peers.raw_acked``, the ``raw-acked`` target) the same
  relay keeps AWS's exact answer, as the gateway does: a post to another node's connection
  is answered only once the owner said it wrote the frame (200) or does not hold the id
  (410). The posts of one loop iteration to one owner leave in one PUBLISH, and the owner's
  answers to one asker in one PUBLISH back (``_Batches``), each answer written in request
  order per HTTP connection. This is the *raw cross-node ceiling with the owner's answer*:
  the least the hop the gateway makes can cost.

It has none of the gateway's features (no SigV4, no AWS error bodies, no registry, no
limits; no timeout or retry of a post whose answer never comes). Run: ``python -m
loadtest.peers.raw --ready-file PATH [--jwt-secret S] [--redis-url URL]``.
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


class _Batches:
    """The acked relay's messages to each channel made during one loop iteration, sent as one
    PUBLISH each (a head naming the kind, then the items), all in one write."""

    def __init__(self, outbox: _Resp) -> None:
        self._outbox = outbox
        self._by_channel: dict[bytes, list[bytes]] = {}

    def add(self, channel: bytes, head: bytes, item: bytes) -> None:
        batch = self._by_channel.get(channel)
        if batch is None:
            if not self._by_channel:
                asyncio.get_running_loop().call_soon(self._flush)
            batch = self._by_channel[channel] = [head]
        batch.append(item)

    def _flush(self) -> None:
        commands = [_pack((b"PUBLISH", channel, b"".join(batch))) for channel, batch in self._by_channel.items()]
        self._by_channel.clear()
        if self._outbox.transport is not None:
            self._outbox.transport.write(b"".join(commands))


class _Answer:
    """An HTTP answer waiting for the owner's word; written, in request order, once it came."""

    __slots__ = ("http", "response")

    def __init__(self, http: _Http) -> None:
        self.http = http
        self.response = b""


class RawNode(BareNode):
    """A bare node whose POSTs go through the minimal HTTP endpoint and the raw relay;
    ``acked``: a post to another node's connection waits for its owner's answer."""

    def __init__(self, node_id: str, secret: str, *, acked: bool = False) -> None:
        super().__init__(node_id, secret)
        self.acked = acked
        self.outbox: _Resp | None = None
        self._batches: _Batches | None = None
        self._channels: dict[str, bytes] = {}
        self._asked_head = b"R" + node_id.encode() + b"\n"
        self._waiting: dict[int, _Answer] = {}  # request id -> its answer (acked)
        self._last_id = 0

    async def connect_bus(self, redis_url: str) -> None:
        """Open the publishing connection and subscribe to this node's channel and the
        tenants' channel; returns once subscribed."""
        url = urlsplit(redis_url)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        loop = asyncio.get_running_loop()
        _, self.outbox = await loop.create_connection(lambda: _Resp(_ignore), host, port)
        self._batches = _Batches(self.outbox)
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
        """A message another node PUBLISHed: a post to one of ours, or a tenant's message;
        acked: a batch of posts to ours, or of answers to ours."""
        if channel == _TENANTS_CHANNEL:
            origin, tenant, body = data.split(b"\n", 2)
            if origin.decode() != self.node_id:
                broadcast(self.tenants.get(tenant.decode(), ()), body, text=True)
        elif not self.acked:
            cid, body = data.split(b"\n", 1)
            self.deliver(cid.decode(), body)
        elif data[:1] == b"R":
            self._serve_posts(data)
        else:
            self._take_answers(data)

    def _serve_posts(self, data: bytes) -> None:
        """``R<asker>\\n`` then ``<id> <size> <connection id>\\n<body>`` per post: deliver
        each, and answer the asker ``<id>`` (written) or ``-<id>`` (not here), in one batch."""
        asker, _, posts = data[1:].partition(b"\n")
        assert self._batches is not None
        add, channel = self._batches.add, self._channel(asker.decode())
        pos, end = 0, len(posts)
        while pos < end:
            eol = posts.index(b"\n", pos)
            rid, size, cid = posts[pos:eol].split(b" ", 2)
            pos = eol + 1 + int(size)
            add(channel, b"A", b" %s" % rid if self.deliver(cid.decode(), posts[eol + 1:pos]) else b" -%s" % rid)

    def _take_answers(self, data: bytes) -> None:
        """``A`` then `` <id>`` / `` -<id>`` per post: each waiting answer written, in order."""
        waiting, touched = self._waiting, set()
        for word in data[1:].split():
            rid = int(word)
            answer = waiting.pop(abs(rid))
            answer.response = _OK if rid > 0 else _GONE
            touched.add(answer.http)
        for http in touched:
            http.write()

    def answer(self, path: str, body: bytes, http: _Http) -> bytes | _Answer:
        """The whole HTTP response to ``POST path`` with ``body``, or (acked, a post to
        another node's connection) the answer that will hold it."""
        if path.startswith("/@connections/"):
            cid = unquote(path[14:])
            if self.deliver(cid, body):
                return _OK
            owner = cid.partition(".")[0]
            if self.outbox is not None and owner != self.node_id:
                if self._batches is not None and self.acked:
                    self._last_id += 1
                    answer = self._waiting[self._last_id] = _Answer(http)
                    item = b"%d %d %s\n" % (self._last_id, len(body), cid.encode())
                    self._batches.add(self._channel(owner), self._asked_head, item + body)
                    return answer
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
            text = orjson.dumps({"delivered": len(local)})
            return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(text), text)
        return _NOT_FOUND

    def _channel(self, node_id: str) -> bytes:
        name = self._channels.get(node_id)
        if name is None:
            name = self._channels[node_id] = f"lt:node:{node_id}".encode()
        return name


class _Http(asyncio.Protocol):
    """One management connection: requests parsed by httptools, answered in order, the
    answers ready after one read (or one batch of the owner's answers) written at once."""

    def __init__(self, node: RawNode) -> None:
        self._node = node
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._out: list[bytes | _Answer] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._out.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.write()
            assert self._transport is not None
            self._transport.close()
            return
        self.write()

    def write(self) -> None:
        """Write the answers that are ready, up to the first still waiting."""
        out = self._out
        ready: list[bytes] = []
        for item in out:
            if isinstance(item, bytes):
                ready.append(item)
            elif item.response:
                ready.append(item.response)
            else:
                break
        if ready:
            del out[:len(ready)]
            if self._transport is not None:
                self._transport.write(b"".join(ready))

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.partition(b"?")[0].decode()
        body = b"".join(self._body)
        self._url, self._body = b"", []
        self._out.append(self._node.answer(path, body, self))


def _ignore(reply: Any) -> None:
    """PUBLISH counts: publish and forget."""


async def _main(acked: bool) -> None:
    args = parse_args("raw HTTP endpoint and RESP relay ceiling" + (", the owner's answer awaited" if acked else ""))
    node = RawNode(args.node_id, args.jwt_secret, acked=acked)
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


def main(*, acked: bool = False) -> None:
    """Run the node until it is killed (SIGTERM / SIGINT); ``acked``: see the module's doc."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main(acked))


if __name__ == "__main__":
    main()
