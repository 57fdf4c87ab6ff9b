"""python-socketio peer: AsyncServer on aiohttp with AsyncRedisManager (its multi-node setup).

Clients connect over WebSocket only and send the token in the CONNECT ``auth`` payload; the
socket joins a room named after its tenant. Events: ``echo`` (emitted back to the sender).
The management paths, on a second aiohttp port, emit ``msg`` to a socket id or a tenant room
through the manager (so through Redis, as every emit of a multi-node python-socketio does).
python-socketio cannot tell an unknown socket id from a known one, so a POST never answers 410.

Run: ``python -m loadtest.peers.socketio_app --ready-file PATH --redis-url URL [--jwt-secret S]``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import socketio
from aiohttp import web

from loadtest.peers.contract import parse_args, tenant_of, write_ready

__all__ = ["build", "main"]


def build(secret: str, redis_url: str) -> socketio.AsyncServer:
    """Return the Socket.IO server with the load generator's events."""
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager, transports=["websocket"],
                               cors_allowed_origins="*", logger=False, engineio_logger=False)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        tenant = tenant_of((auth or {}).get("token", ""), secret, is_token=True)
        if tenant is None:
            return False
        await sio.enter_room(sid, tenant)
        return True

    @sio.event
    async def echo(sid: str, data: Any) -> None:
        await sio.emit("echo", data, to=sid)

    return sio


def management(sio: socketio.AsyncServer) -> web.Application:
    """Return the aiohttp app serving the management paths."""

    async def post_connection(request: web.Request) -> web.Response:
        await sio.emit("msg", (await request.read()).decode(), to=request.match_info["id"])
        return web.Response()

    async def post_tenant(request: web.Request) -> web.Response:
        await sio.emit("msg", (await request.read()).decode(), room=request.match_info["tenant"])
        return web.json_response({"delivered": -1})  # unknown: the emit goes through Redis

    app = web.Application()
    app.router.add_post("/@connections/{id}", post_connection)
    app.router.add_post("/@tenants/{tenant}/messages", post_tenant)
    return app


async def _site(app: web.Application, host: str, port: int, reuse: bool) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse or None).start()
    return runner, runner.addresses[0][1]


async def _main() -> None:
    import asyncio

    args = parse_args("python-socketio peer")
    sio = build(args.jwt_secret, args.redis_url)
    app = web.Application()
    sio.attach(app)
    _, port = await _site(app, args.host, args.port, args.reuse_port)
    _, mport = await _site(management(sio), args.host, args.management_port, args.reuse_port)
    write_ready(args.ready_file, args.node_id, port, mport)
    await asyncio.Event().wait()


def main() -> None:
    """Run until killed."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is a normal stop
        uvloop.run(_main())


if __name__ == "__main__":
    main()
