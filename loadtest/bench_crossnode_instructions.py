"""Instructions two nodes spend per cross-node POST, both nodes under callgrind, Redis and
the clients outside.

    python loadtest/bench_crossnode_instructions.py [--small 300] [--large 3300] [--keep DIR]

Starts a private redis-server (not measured), then two ``wsgateway serve`` nodes (Redis
registry, SigV4 off, auth off, keepalive off, access log off) under ``valgrind
--tool=callgrind`` with ``PYTHONHASHSEED=0``. ``CLIENTS`` WebSocket clients connect to node B
and learn their ids (``whoami``); a plain-asyncio HTTP client (``loadtest.http_client``:
``CONNECTIONS`` keep-alive connections, ``IN_FLIGHT`` requests pipelined in all) POSTs
``/@connections/{id}`` on node A, round-robin over the clients, until every client got its
share. Both nodes are then stopped with SIGTERM and callgrind's totals read. It does so with
``--small`` and ``--large`` posts; the difference divided by ``large - small`` is the cost of
one cross-node POST on each node (start-up, handshakes, heartbeats and shutdown cancelled out,
as far as they do not depend on the run's length). ``PYTHONPATH=TREE`` names the wsgateway
tree measured (the driving side does not depend on it).

How many requests one PUBLISH batch carries depends on how many are in flight, and so on
timing: the figure is steadier than a timed run, not exact; each run prints the batch size it
reached (posts per PUBLISH, from Redis's command counts: a request batch and its one "ok"
are two PUBLISHes for all the posts in it). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis
import websockets

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.callgrind import Counted, node_config  # noqa: E402
from loadtest.http_client import Pool  # noqa: E402
from loadtest.servers import start_redis  # noqa: E402

CLIENTS = 20
CONNECTIONS = 4
IN_FLIGHT = 32
PAYLOAD = b'{"t":0,"seq":0,"pad":"' + b"x" * 166 + b'"}'

_CONFIG = node_config(
    management='auth = "none"\n', routes='"whoami" = "loadtest.peers.gw_handlers:whoami"\n',
    more='[registry]\nbackend = "redis"\nredis_url = "{url}"\n',
)


def _start_node(name: str, workdir: Path, redis_url: str) -> Counted:
    config = workdir / f"{name}.toml"
    config.write_text(_CONFIG.format(url=redis_url))
    return Counted(name, [sys.executable, "-m", "wsgateway", "serve", "--config", str(config),
                          "--ready-file", "{ready}"], workdir)


async def _drive(ws_port: int, management_port: int, posts: int) -> None:
    url = f"ws://127.0.0.1:{ws_port}/prod?tenant=t1"
    clients = [await websockets.connect(url, open_timeout=120, ping_interval=None) for _ in range(CLIENTS)]
    ids = []
    for ws in clients:
        await ws.send('{"action":"whoami"}')
        ids.append(json.loads(await ws.recv())["id"])
    requests = [
        (f"POST /@connections/{quote(i, safe='')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n").encode() + PAYLOAD
        for i in ids
    ]

    async def receive(ws: websockets.ClientConnection, count: int) -> None:
        for _ in range(count):
            if (await ws.recv()) != PAYLOAD.decode():
                raise SystemExit("unexpected frame")

    share, extra = divmod(posts, CLIENTS)
    receivers = [asyncio.ensure_future(receive(ws, share + (k < extra))) for k, ws in enumerate(clients)]
    async with Pool("127.0.0.1", management_port, CONNECTIONS, timeout=120) as pool:
        counter = iter(range(posts))

        async def sender() -> None:
            for n in counter:
                status, body = await pool.request(requests[n % CLIENTS])
                if status != 200:
                    raise SystemExit(f"POST answered {status}: {body!r}")

        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    await asyncio.wait_for(asyncio.gather(*receivers), 120)
    for ws in clients:
        await ws.close()


def _publishes(redis_url: str) -> int:
    """How many PUBLISHes Redis has served so far (each carries a batch of node messages)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))
    finally:
        client.close()


def instructions(posts: int, workdir: Path, redis_url: str) -> tuple[int, int]:
    """Run both nodes under callgrind for ``posts`` cross-node posts; their instruction totals
    (A: the node posted to, B: the clients' node)."""
    nodes = [_start_node(f"{name}-{posts}", workdir, redis_url) for name in ("A", "B")]
    try:
        a, b = (node.ready() for node in nodes)
        time.sleep(1.0)  # both beat once: B is live when A asks
        published = _publishes(redis_url)
        asyncio.run(_drive(int(b["port"]), int(a["management_port"]), posts))  # type: ignore[call-overload]
        published = _publishes(redis_url) - published
        # A batch of requests and one "ok" for all of them, plus the odd heartbeat-time message.
        print(f"{posts} posts: {published} PUBLISHes, {posts / max(1, published):.1f} posts per PUBLISH",
              flush=True)
    finally:
        for node in nodes:
            node.stop()
    return nodes[0].instructions(), nodes[1].instructions()


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=3300)
    parser.add_argument("--keep", help="write the callgrind files into this directory (for callgrind_annotate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        server = start_redis(workdir)
        try:
            url = str(server.ready["url"])
            small = instructions(args.small, workdir, url)
            large = instructions(args.large, workdir, url)
        finally:
            server.stop()
    span = args.large - args.small
    a, b = ((large[k] - small[k]) / span for k in (0, 1))
    print(f"node A (posted to): {small[0]:,} / {large[0]:,} instructions -> {a / 1000:.1f}k per post")
    print(f"node B (clients):   {small[1]:,} / {large[1]:,} instructions -> {b / 1000:.1f}k per post")
    print(f"both: {(a + b) / 1000:.1f}k instructions per cross-node POST")


if __name__ == "__main__":
    main()
