"""Instructions a server spends per echo, the server alone under callgrind, the client outside.

    python loadtest/bench_server_instructions.py [--target bare,wsgateway,wsgateway-loadtest-config]
        [--small 100] [--large 1100] [--keep DIR]

For each target it starts the server (``python -m loadtest.peers.bare``, or ``wsgateway serve``
with the ``echo`` route of ``loadtest/peers/gw_handlers.py``: ``wsgateway`` with auth off,
keepalive off, access log off; ``wsgateway-loadtest-config`` with the load test's own config,
``loadtest.targets.gateway_config``: JWT on every handshake, keepalive and the console as
defaults have them, SigV4, memory registry) under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, drives it from this
process with websockets clients (10 connections, each sending its share of the echoes one at
a time), stops it with SIGTERM, and reads the instruction total callgrind wrote. It does so
with ``--small`` and ``--large`` echoes; the difference divided by ``large - small`` is the
cost of one echo, start-up, the handshakes and shutdown cancelled out. ``PYTHONPATH=TREE``
names the wsgateway tree measured (the client side does not depend on it).

Needs valgrind. Each server run takes tens of seconds (CPython under callgrind is ~50x slower).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import websockets

sys.path.append(str(Path(__file__).resolve().parents[1]))  # run by path: loadtest itself, after PYTHONPATH's tree

from loadtest.callgrind import compare_cli, count, node_config
from loadtest.roles.base import connection_token
from loadtest.targets import gateway_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 10
MESSAGE = '{"action":"echo","t":0,"seq":0,"pad":"' + "x" * 166 + '"}'
_JWT_SECRET = "bench-server-instructions-" + "0" * 38  # fixed: every run does the same work

_CONFIG = node_config(routes='"echo" = "loadtest.peers.gw_handlers:echo"\n')


def _server_argv(target: str, workdir: Path, ready: Path) -> list[str]:
    if target == "bare":
        return [sys.executable, "-m", "loadtest.peers.bare", "--ready-file", str(ready)]
    if target == "wsgateway":
        config = workdir / "wsgateway.toml"
        config.write_text(_CONFIG)
        return [sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready)]
    if target == "wsgateway-loadtest-config":
        config = workdir / "wsgateway-loadtest-config.toml"
        config.write_text(gateway_config(secret=_JWT_SECRET, access_key="AKIDBENCH", secret_key="0" * 40))
        return [sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready)]
    raise SystemExit(f"unknown target {target!r} (bare, wsgateway, wsgateway-loadtest-config)")


async def _drive(target: str, port: int, echoes: int) -> None:
    def url(i: int) -> str:
        if target == "wsgateway-loadtest-config":
            return f"ws://127.0.0.1:{port}/?token={connection_token(_JWT_SECRET, 't1', i)}"
        return f"ws://127.0.0.1:{port}/prod?tenant=t1"

    clients = [await websockets.connect(url(i), open_timeout=120, ping_interval=None) for i in range(CONNECTIONS)]

    async def one(ws: websockets.ClientConnection, count: int) -> None:
        for _ in range(count):
            await ws.send(MESSAGE)
            reply = await ws.recv()
            if reply != MESSAGE:
                raise SystemExit(f"unexpected reply {reply!r}")

    share, extra = divmod(echoes, CONNECTIONS)
    await asyncio.gather(*(one(ws, share + (i < extra)) for i, ws in enumerate(clients)))
    for ws in clients:
        await ws.close()


def instructions(target: str, echoes: int, workdir: Path) -> int:
    """Run ``target`` under callgrind for ``echoes`` echoes; return its instruction total."""
    argv = _server_argv(target, workdir, Path("{ready}"))
    return count(f"{target}-{echoes}", argv, workdir, lambda info: _drive(target, int(info["port"]), echoes))


def main() -> None:
    compare_cli(__doc__ or "", "bare,wsgateway", 100, 1100, "echo", "bare", instructions)

if __name__ == "__main__":
    main()
