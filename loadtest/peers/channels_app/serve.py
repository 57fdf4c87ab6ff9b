"""Runs the Channels peer under uvicorn (uvloop) and writes the ready file once it listens.

Client and management paths share one port, as a Django deployment would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from loadtest.peers.contract import parse_args, write_ready

__all__ = ["main"]


async def _main() -> None:
    args = parse_args("Django Channels peer")
    os.environ["LT_REDIS_URL"] = args.redis_url
    os.environ["LT_JWT_SECRET"] = args.jwt_secret
    import uvicorn

    config = uvicorn.Config("loadtest.peers.channels_app.asgi:application", host=args.host, port=args.port,
                            log_level="warning", access_log=False, lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it stopped
            return
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    write_ready(args.ready_file, args.node_id, port, port)
    await task


def main() -> None:
    """Run until killed."""
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is a normal stop
        uvloop.run(_main())


if __name__ == "__main__":
    main()
