"""A fixed workload against one in-process node, to count its instructions under callgrind:
what a change costs on a path, free of the machine's load (which moves every timed figure).

    valgrind --tool=callgrind --callgrind-out-file=OUT python loadtest/bench_instructions.py WORKLOAD N

Run it twice, with N small and N large, and subtract the totals (``summary:`` in OUT): what is
left is the cost of the extra messages, start-up and shutdown cancelled out. Set
``PYTHONHASHSEED`` so that both runs hash alike. Run by path (not
``-m``), ``PYTHONPATH=TREE`` names the wsgateway tree measured, so one script compares two
commits (the client side is the same code in both runs).

Workloads: ``echo`` (a route answers each frame), ``unicast`` (``post_to_connection`` to a local
connection), ``fanout`` (``post_to_tenant`` to 50 local connections); ``unicast-reliable`` and
``fanout-reliable`` are the last two with clients on ``wsgateway.reliable.v1``, acknowledging
every 64th message. 200-byte messages, memory registry, access log off, no auth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))  # loadtest.peers, after PYTHONPATH's wsgateway

import uvloop
import websockets

from wsgateway.config import parse_config
from wsgateway.node import Node

SUBPROTOCOL = "wsgateway.reliable.v1"
FANOUT_CLIENTS = 50
PAYLOAD = '{"t":0,"seq":0,"pad":"' + "x" * 174 + '"}'
ACK_EVERY = 64


async def _client(node: Node, reliable: bool) -> tuple[Any, str]:
    url = f"ws://127.0.0.1:{node.port}/prod?tenant=t1"
    ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL] if reliable else None)  # type: ignore[list-item]
    if reliable:
        return ws, json.loads(await ws.recv())["connectionId"]
    await ws.send('{"action":"whoami"}')
    return ws, json.loads(await ws.recv())["id"]


async def _receive(ws: Any, reliable: bool, count: int) -> None:
    for _ in range(count):
        frame = await ws.recv()
        if reliable:
            seq = json.loads(frame)["seq"]
            if seq % ACK_EVERY == 0:
                await ws.send(f'{{"type":"ack","seq":{seq}}}')


def _tune_gc() -> None:
    """As ``wsgateway serve`` does (cli.py): what start-up allocated leaves the collector's
    sight, so that a tree that imports more does not pay for it in every full collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def run(workload: str, n: int) -> None:
    config = parse_config({
        "listen": {"host": "127.0.0.1", "port": 0},
        "management": {"host": "127.0.0.1", "port": 0},
        "log": {"access_log": ""},
        "routes": {"echo": "loadtest.peers.gw_handlers:echo", "whoami": "loadtest.peers.gw_handlers:whoami"},
    })
    node = Node(config)
    await node.start()
    gateway = node.gateway
    reliable = workload.endswith("-reliable")
    try:
        if workload == "echo":
            ws, _ = await _client(node, False)
            message = '{"action":"echo",' + PAYLOAD[1:]
            _tune_gc()
            for _ in range(n):
                await ws.send(message)
                await ws.recv()
        elif workload.startswith("unicast"):
            ws, cid = await _client(node, reliable)
            _tune_gc()
            for _ in range(n):
                await gateway.post_to_connection(cid, PAYLOAD)
                await _receive(ws, reliable, 1)
        elif workload.startswith("fanout"):
            clients = [(await _client(node, reliable))[0] for _ in range(FANOUT_CLIENTS)]
            _tune_gc()
            for _ in range(n):
                await gateway.post_to_tenant("t1", PAYLOAD)
                await asyncio.gather(*(_receive(ws, reliable, 1) for ws in clients))
        else:
            raise SystemExit(f"unknown workload {workload!r}")
    finally:
        await node.stop()


WORKLOADS = ("echo", "unicast", "fanout", "unicast-reliable", "fanout-reliable")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("n", type=int, help="messages (run once small, once large, and subtract)")
    args = parser.parse_args()
    uvloop.run(run(args.workload, args.n))


if __name__ == "__main__":
    main()
