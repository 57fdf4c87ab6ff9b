"""Instructions a server spends per management POST, the server alone under callgrind, the
backend and the clients outside.

    python loadtest/bench_management_instructions.py [--target raw,wsgateway-nosig,wsgateway]
        [--small 200] [--large 2200]

For each target it starts one node (``python -m loadtest.peers.raw``: the minimal asyncio HTTP
endpoint; ``wsgateway serve`` with its memory registry, SigV4 off (``wsgateway-nosig``) or on
(``wsgateway``), auth off for clients, keepalive off, access log off) under ``valgrind
--tool=callgrind`` with ``PYTHONHASHSEED=0``, holds ``CONNECTIONS`` WebSocket connections to it
(each learns its id with ``whoami``), and drives ``POST /@connections/{id}`` from this process
with the load generator's own pipelining client and signer (:class:`loadtest.backend.Backend`,
every request signed for every target, ``IN_FLIGHT`` requests in flight, ``DEPTH`` to a
connection), each post checked 200 and its frame received. It stops the node with SIGTERM and
reads the instruction total callgrind wrote, once with ``--small`` and once with ``--large``
posts; the difference divided by ``large - small`` is the cost of one POST, start-up, the
handshakes and shutdown cancelled out. ``PYTHONPATH=TREE`` names the wsgateway tree measured
(the driving side does not depend on it).

Needs valgrind. Each server run takes tens of seconds (CPython under callgrind is ~50x slower).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # loadtest.*, after PYTHONPATH's wsgateway

import websockets

from loadtest.backend import UNCHECKED_KEYS, Backend, connection_path
from loadtest.callgrind import compare_cli, count, node_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 10
IN_FLIGHT = 16
DEPTH = 4  # as the load generator's unicast backend pipelines
PAYLOAD = ('{"t":0,"seq":0,"pad":"' + "x" * 174 + '"}').encode()
KEYS = ("AKIDBENCHMARK", "bench-secret-key")

_CONFIG = node_config(
    management='auth = "{auth}"\n[[management.credentials]]\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n',
    routes='"whoami" = "loadtest.peers.gw_handlers:whoami"\n',
)


def _server_argv(target: str, workdir: Path, ready: Path) -> list[str]:
    if target == "raw":
        return [sys.executable, "-m", "loadtest.peers.raw", "--ready-file", str(ready)]
    if target in ("wsgateway", "wsgateway-nosig"):
        config = workdir / f"{target}.toml"
        auth = "sigv4" if target == "wsgateway" else "none"
        config.write_text(_CONFIG.format(auth=auth, key=KEYS[0], secret=KEYS[1]))
        return [sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready)]
    raise SystemExit(f"unknown target {target!r} (raw, wsgateway-nosig, wsgateway)")


async def _drive(target: str, port: int, mport: int, posts: int) -> None:
    url = f"ws://127.0.0.1:{port}/prod?tenant=t1"
    clients = [await websockets.connect(url, open_timeout=120, ping_interval=None, max_queue=None)
               for _ in range(CONNECTIONS)]
    paths = []
    for ws in clients:
        await ws.send('{"action":"whoami"}')
        paths.append(connection_path(json.loads(await ws.recv())["id"]))
    share, extra = divmod(posts, CONNECTIONS)

    async def receive(ws: websockets.ClientConnection, count: int) -> None:
        for _ in range(count):
            if (frame := await ws.recv(decode=False)) != PAYLOAD:
                raise SystemExit(f"unexpected frame {frame!r}")

    receiving = [asyncio.create_task(receive(ws, share + (i < extra))) for i, ws in enumerate(clients)]
    keys = KEYS if target == "wsgateway" else UNCHECKED_KEYS
    async with Backend(f"http://127.0.0.1:{mport}", keys, IN_FLIGHT, DEPTH) as backend:
        turns = itertools.islice(itertools.cycle(paths), posts)  # shared: each post goes once

        async def post() -> None:
            for path in turns:
                status, body = await backend.post(path, PAYLOAD)
                if status != 200:
                    raise SystemExit(f"POST {path}: {status} {body!r}")

        await asyncio.gather(*(post() for _ in range(IN_FLIGHT)))
    await asyncio.wait_for(asyncio.gather(*receiving), 120)
    for ws in clients:
        await ws.close()


def instructions(target: str, posts: int, workdir: Path) -> int:
    """Run ``target`` under callgrind for ``posts`` posts; return its instruction total."""
    argv = _server_argv(target, workdir, Path("{ready}"))
    return count(f"{target}-{posts}", argv, workdir,
                 lambda info: _drive(target, int(info["port"]), int(info["management_port"]), posts))


def main() -> None:
    compare_cli(__doc__ or "", "raw,wsgateway-nosig,wsgateway", 200, 2200, "POST", "raw", instructions)

if __name__ == "__main__":
    main()
