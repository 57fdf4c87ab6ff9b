"""The backend of the ``echohttp`` scenario: an aiohttp app on loopback that echoes.

Both targets POST each client message to it: wsgateway as an HTTP integration (the body is
the Lambda-proxy event; the answer is the event's ``body``), bare with its pooled aiohttp
client (the body is the message itself, answered as is). Either way the answer is a
``text/plain`` 200 that goes back to the client as one frame.

Run: ``python -m loadtest.peers.echo_backend --ready-file PATH``.
"""

from __future__ import annotations

import contextlib

import orjson
from aiohttp import web

from loadtest.peers.contract import parse_args, write_ready

__all__ = ["main"]


async def echo(request: web.Request) -> web.Response:
    """Answer the message: the event's ``body``, or the posted message itself."""
    data = await request.read()
    if "X-Wsgateway-Request-Id" in request.headers:  # wsgateway's event, not a bare message
        data = orjson.loads(data)["body"].encode()
    return web.Response(body=data, content_type="text/plain")


async def _main() -> None:
    import asyncio

    args = parse_args("echo backend for the echohttp scenario")
    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=2048)
    await site.start()
    write_ready(args.ready_file, args.node_id, runner.addresses[0][1], 0)
    await asyncio.Event().wait()  # until SIGTERM


def main() -> None:
    """Serve until killed."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main())


if __name__ == "__main__":
    main()
