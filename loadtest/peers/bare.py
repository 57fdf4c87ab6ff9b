"""The ceiling: a minimal ``websockets`` server doing the load generator's work, no gateway.

It verifies the HS256 token in the handshake, routes ``echo`` / ``whoami`` by ``action``, and
serves the management paths from aiohttp on a second port, writing to sockets with
``websockets.broadcast`` (one encoded frame, no await), as ``docs/performance.md`` measured.
Cross-node (``--redis-url``): a connection id starts with its node id, so the receiving node
PUBLISHes to the owner's own channel; tenant messages go to one channel every node reads.
With ``--backend-url`` (the ``echohttp`` scenario) ``echo`` POSTs each message to that HTTP
backend with one pooled aiohttp client and sends its answer back, as wsgateway's HTTP
integration does. It has none of the gateway's features: no $connect handler, no AWS event, no SigV4, no
registry, no slow-consumer cut-off (``broadcast`` buffers without bound). It tunes the
garbage collector as ``wsgateway serve`` does (freeze what start-up allocated, raise the
first threshold), so a ratio compares the two code paths, not two GC settings: untuned,
CPython's cyclic GC costs bare ~15% of its handshake rate with 10k connections open.

Run: ``python -m loadtest.peers.bare --ready-file PATH [--jwt-secret S] [--redis-url URL]
[--backend-url URL]``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector, web
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from loadtest.peers.contract import parse_args, tenant_of, write_ready

__all__ = ["BareNode", "main"]

_GONE = {"x-amzn-ErrorType": "GoneException"}
_TENANTS_CHANNEL = "lt:tenants"
_BACKLOG = 2048  # as wsgateway's listen.backlog: asyncio's 100 drops SYNs in connect bursts


class BareNode:
    """One node: its connections by id and by tenant, and the optional Redis bus."""

    def __init__(self, node_id: str, secret: str) -> None:
        self.node_id = node_id
        self.secret = secret
        self.conns: dict[str, ServerConnection] = {}
        self.tenants: dict[str, set[ServerConnection]] = defaultdict(set)
        self.redis: Any = None
        self.backend_url = ""
        self.http: ClientSession | None = None  # one pool for every connection (echohttp)

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake with 401 unless the token verifies; remember the tenant."""
        tenant = tenant_of(request.path, self.secret)
        if tenant is None:
            return conn.respond(401, "Unauthorized\n")
        conn.tenant = tenant  # type: ignore[attr-defined]
        return None

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one client: register it, answer its actions, unregister it."""
        cid = f"{self.node_id}.{base64.urlsafe_b64encode(os.urandom(9)).decode()}"
        tenant = ws.tenant  # type: ignore[attr-defined]
        self.conns[cid] = ws
        self.tenants[tenant].add(ws)
        try:
            async for frame in ws:
                try:
                    action = orjson.loads(frame).get("action")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if action == "echo" and self.http is not None:
                    await ws.send(await self.forward(frame))
                elif action == "echo":
                    await ws.send(frame)
                elif action == "whoami":
                    await ws.send(f'{{"id":"{cid}"}}')
        except ConnectionClosed:
            pass  # clients of a load run often leave without a close frame
        finally:
            del self.conns[cid]
            self.tenants[tenant].discard(ws)

    async def forward(self, frame: str | bytes) -> str:
        """POST a message to the backend; return its answer (one frame to send back)."""
        assert self.http is not None
        data = frame.encode() if isinstance(frame, str) else frame
        async with self.http.post(self.backend_url, data=data, headers={"Content-Type": "application/json"},
                                  allow_redirects=False) as resp:
            return (await resp.read()).decode()  # the least work: no charset guess

    def deliver(self, cid: str, data: bytes) -> bool:
        """Write ``data`` to a local connection; return whether it is here."""
        ws = self.conns.get(cid)
        if ws is None:
            return False
        broadcast((ws,), data, text=True)
        return True

    async def post_connection(self, request: web.Request) -> web.Response:
        """``POST /@connections/{id}``: 200, or 410 when no node holds the id."""
        cid = request.match_info["id"]
        data = await request.read()
        if self.deliver(cid, data):
            return web.Response()
        owner = cid.partition(".")[0]
        if self.redis is not None and owner != self.node_id:
            await self.redis.publish(f"lt:node:{owner}", cid.encode() + b"\n" + data)
            return web.Response()
        return web.Response(status=410, headers=_GONE)

    async def post_tenant(self, request: web.Request) -> web.Response:
        """``POST /@tenants/{tenant}/messages``: local broadcast plus one PUBLISH to the rest."""
        tenant = request.match_info["tenant"]
        data = await request.read()
        local = self.tenants.get(tenant, ())
        broadcast(local, data, text=True)
        if self.redis is not None:
            head = f"{self.node_id}\n{tenant}\n".encode()
            await self.redis.publish(_TENANTS_CHANNEL, head + data)
        return web.json_response({"delivered": len(local)})

    async def run_bus(self) -> None:
        """Deliver what other nodes PUBLISH to this one; runs until cancelled."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(f"lt:node:{self.node_id}", _TENANTS_CHANNEL)
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            if msg["channel"] == _TENANTS_CHANNEL.encode():
                origin, tenant, data = msg["data"].split(b"\n", 2)
                if origin.decode() != self.node_id:
                    broadcast(self.tenants.get(tenant.decode(), ()), data, text=True)
            else:
                cid, data = msg["data"].split(b"\n", 1)
                self.deliver(cid.decode(), data)


async def _main() -> None:
    args = parse_args("bare websockets ceiling")
    node = BareNode(args.node_id, args.jwt_secret)
    bus = None
    if args.redis_url:
        import redis.asyncio as aioredis

        node.redis = aioredis.Redis.from_url(args.redis_url)
        bus = asyncio.create_task(node.run_bus())
    if args.backend_url:  # the same pool wsgateway's [integrations.http] defaults to
        node.backend_url = args.backend_url
        node.http = ClientSession(connector=TCPConnector(limit=100))
    app = web.Application()
    app.router.add_post("/@connections/{id}", node.post_connection)
    app.router.add_post("/@tenants/{tenant}/messages", node.post_tenant)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.management_port, reuse_port=args.reuse_port or None,
                       backlog=_BACKLOG)
    await site.start()
    mport = runner.addresses[0][1]
    async with serve(
        node.handler,
        args.host,
        args.port,
        process_request=node.process_request,
        compression="deflate" if args.compression else None,
        reuse_port=args.reuse_port or None,
        backlog=_BACKLOG,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gc.collect()  # as wsgateway's cli: long-lived connections make young-generation GC costly
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        write_ready(args.ready_file, args.node_id, port, mport)
        await server.serve_forever()
    if bus is not None:
        bus.cancel()


def main() -> None:
    """Run the node until it is killed (SIGTERM / SIGINT)."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is a normal stop
        uvloop.run(_main())


if __name__ == "__main__":
    main()
