"""Instructions two nodes spend per cross-node POST, both nodes under callgrind, Redis and
the clients outside.

    python loadtest/bench_crossnode_instructions.py [--target wsgateway-nosig] [--small 300] [--large 3300]
        [--keep DIR]

Starts a private redis-server (not measured), then for each target (a comma list of
``raw``, ``raw-acked``, ``wsgateway-nosig`` and ``wsgateway``) two nodes under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``: ``wsgateway serve`` (Redis registry,
SigV4 off (``wsgateway-nosig``) or on (``wsgateway``), auth off for clients, keepalive off,
access log off), or the raw relays (``python -m loadtest.peers.raw``: publish and forget;
``loadtest.peers.raw_acked``: the owner's answer awaited, as the gateway does). ``CLIENTS``
WebSocket clients connect to node B and learn their ids (``whoami``); the load generator's
own pipelining client and signer (:class:`loadtest.backend.Backend`: every request signed for
every target, ``IN_FLIGHT`` requests in flight, ``DEPTH`` to a connection) POSTs
``/@connections/{id}`` on node A, round-robin over the clients, each post checked 200 and
its frame received. Both nodes are then stopped with SIGTERM and callgrind's totals read. It
does so with ``--small`` and ``--large`` posts; the difference divided by ``large - small``
is the cost of one cross-node POST on each node (start-up, handshakes, heartbeats and
shutdown cancelled out, as far as they do not depend on the run's length), and each
target's total is compared with the first target's. ``PYTHONPATH=TREE`` names the wsgateway
tree measured (the driving side does not depend on it).

How many requests one PUBLISH batch carries depends on how many are in flight, and so on
timing: the figure is steadier than a timed run, not exact; each run prints the batch size it
reached (posts per PUBLISH, from Redis's command counts: for the gateway and raw-acked a
request batch and its answer are two PUBLISHes for all the posts in it; raw makes one
PUBLISH a post). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import redis
import websockets

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.backend import UNCHECKED_KEYS, Backend, connection_path  # noqa: E402
from loadtest.callgrind import Counted, node_config  # noqa: E402
from loadtest.servers import start_redis  # noqa: E402

TARGETS = ("raw", "raw-acked", "wsgateway-nosig", "wsgateway")
CLIENTS = 20
IN_FLIGHT = 32
DEPTH = 8  # four pipelined connections
PAYLOAD = b'{"t":0,"seq":0,"pad":"' + b"x" * 166 + b'"}'
KEYS = ("AKIDBENCHMARK", "bench-secret-key")

_CONFIG = node_config(
    management='auth = "{auth}"\n[[management.credentials]]\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n',
    routes='"whoami" = "loadtest.peers.gw_handlers:whoami"\n',
    more='[registry]\nbackend = "redis"\nredis_url = "{url}"\n',
)


def _start_node(target: str, name: str, index: int, workdir: Path, redis_url: str) -> Counted:
    if target in ("raw", "raw-acked"):
        module = "loadtest.peers.raw" if target == "raw" else "loadtest.peers.raw_acked"
        return Counted(name, [sys.executable, "-m", module, "--ready-file", "{ready}", "--node-id", f"n{index}",
                              "--redis-url", redis_url], workdir)
    if target not in ("wsgateway", "wsgateway-nosig"):
        raise SystemExit(f"unknown target {target!r} ({', '.join(TARGETS)})")
    config = workdir / f"{name}.toml"
    auth = "sigv4" if target == "wsgateway" else "none"
    config.write_text(_CONFIG.format(auth=auth, key=KEYS[0], secret=KEYS[1], url=redis_url))
    return Counted(name, [sys.executable, "-m", "wsgateway", "serve", "--config", str(config),
                          "--ready-file", "{ready}"], workdir)


async def _drive(target: str, ws_port: int, management_port: int, posts: int) -> None:
    url = f"ws://127.0.0.1:{ws_port}/prod?tenant=t1"
    clients = [await websockets.connect(url, open_timeout=120, ping_interval=None, max_queue=None)
               for _ in range(CLIENTS)]
    paths = []
    for ws in clients:
        await ws.send('{"action":"whoami"}')
        paths.append(connection_path(json.loads(await ws.recv())["id"]))

    async def receive(ws: websockets.ClientConnection, count: int) -> None:
        for _ in range(count):
            if (frame := await ws.recv(decode=False)) != PAYLOAD:
                raise SystemExit(f"unexpected frame {frame!r}")

    share, extra = divmod(posts, CLIENTS)
    receivers = [asyncio.ensure_future(receive(ws, share + (k < extra))) for k, ws in enumerate(clients)]
    keys = KEYS if target == "wsgateway" else UNCHECKED_KEYS
    async with Backend(f"http://127.0.0.1:{management_port}", keys, IN_FLIGHT, DEPTH) as backend:
        turns = itertools.islice(itertools.cycle(paths), posts)  # shared: each post goes once

        async def sender() -> None:
            for path in turns:
                status, body = await backend.post(path, PAYLOAD)
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


def instructions(target: str, posts: int, workdir: Path, redis_url: str) -> tuple[int, int]:
    """Run both nodes of ``target`` under callgrind for ``posts`` cross-node posts; their
    instruction totals (A: the node posted to, B: the clients' node)."""
    nodes = [_start_node(target, f"{target}-{name}-{posts}", k, workdir, redis_url) for k, name in enumerate("AB")]
    try:
        a, b = (node.ready() for node in nodes)
        time.sleep(1.0)  # both beat once: B is live when A asks
        published = _publishes(redis_url)
        asyncio.run(_drive(target, int(b["port"]), int(a["management_port"]), posts))  # type: ignore[call-overload]
        published = _publishes(redis_url) - published
        print(f"{target}, {posts} posts: {published} PUBLISHes, {posts / max(1, published):.1f} posts per PUBLISH",
              flush=True)
    finally:
        for node in nodes:
            node.stop()
    return nodes[0].instructions(), nodes[1].instructions()


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--target", default="wsgateway-nosig", help=f"a comma list of {', '.join(TARGETS)}")
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=3300)
    parser.add_argument("--keep", help="write the callgrind files into this directory (for callgrind_annotate)")
    args = parser.parse_args()
    targets = args.target.split(",")
    per_post: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        server = start_redis(workdir)
        try:
            url = str(server.ready["url"])
            for target in targets:
                small = instructions(target, args.small, workdir, url)
                large = instructions(target, args.large, workdir, url)
                a, b = ((large[k] - small[k]) / (args.large - args.small) for k in (0, 1))
                per_post[target] = a + b
                print(f"{target}: node A (posted to) {a / 1000:.1f}k + node B (clients) {b / 1000:.1f}k"
                      f" = {(a + b) / 1000:.1f}k instructions per cross-node POST", flush=True)
        finally:
            server.stop()
    first = targets[0]
    for target in targets[1:]:
        print(f"{target}: {per_post[first] / per_post[target]:.2f}x {first} ({first}'s instructions per POST / its own)")


if __name__ == "__main__":
    main()
