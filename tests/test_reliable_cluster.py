"""Reliable connections across three gateway processes on one private Redis: a client's link
dies (a real TCP cut, by :class:`tests.reliable_support.CutLink`), backends keep posting
through boto3 to any node, and the client resumes on another node under the same id.

Handlers (``tests.cluster_handlers``) append every ``$connect``/``$disconnect`` to a file, since
the nodes are other processes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.cluster_support import Cluster, GatewayProcess, error_code, settled, wait_until
from tests.reliable_support import CutLink, ReliableClient

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _disconnects(cluster: Cluster, connection_id: str) -> list[Any]:
    return [e["disconnectStatusCode"] for e in cluster.events("$disconnect") if e["connectionId"] == connection_id]


def _connects(cluster: Cluster, connection_id: str) -> int:
    return sum(1 for e in cluster.events("$connect") if e["connectionId"] == connection_id)


async def _listing(node: GatewayProcess, tenant: str) -> dict[str, str]:
    """The tenant's connections on every node, as one node lists them: id -> node id."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.endpoint}/@tenants/{tenant}/connections?limit=1000") as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return {c["connectionId"]: c["nodeId"] for c in body["connections"]}


async def _three(cluster: Cluster, extra: str = "") -> list[GatewayProcess]:
    nodes = await cluster.start_all("a", "b", "c", extra=extra)
    for node in nodes:
        await settled(node)
    return nodes


async def test_a_session_resumes_on_another_node_with_nothing_lost(cluster: Cluster) -> None:
    a, b, c = await _three(cluster)
    api_c, api_b = c.management(), b.management()
    async with CutLink(a.port) as link:
        client = ReliableClient()
        hello = await client.connect(link.url(tenant="t1"))
        cid = client.connection_id
        assert hello["resumed"] is False and _connects(cluster, cid) == 1
        k = 5
        for i in range(1, k + 1):
            await asyncio.to_thread(api_c.post_to_connection, ConnectionId=cid, Data=f"m{i}".encode())
        assert [await client.recv() for _ in range(k)] == [(i, f"m{i}") for i in range(1, k + 1)]

        before = await asyncio.to_thread(api_b.get_connection, ConnectionId=cid)
        link.cut()
        link.target = b.port  # the load balancer sends the next connection to another node
        gets: list[str] = []

        async def backend() -> None:
            """100 posts over 4 s or more through node c, get_connection through b between them."""
            for i in range(k + 1, k + 101):
                await asyncio.to_thread(api_c.post_to_connection, ConnectionId=cid, Data=f"m{i}".encode())
                gets.append(await asyncio.to_thread(error_code, api_b.get_connection, ConnectionId=cid))
                await asyncio.sleep(0.04)

        posting = asyncio.ensure_future(backend())
        # A third of the posts (or more, on a slow machine) go to the dropped session on a.
        await wait_until(lambda: len(gets) >= 33, 20, "a third of the posts")
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        assert hello["reconnectionToken"] != ""
        got, _ = await asyncio.gather(client.recv_many(100), posting)
        assert got == [(i, f"m{i}") for i in range(k + 1, k + 101)]  # in order, no gap, no duplicate
        assert set(gets) == {"200"}
        assert (await _listing(c, "t1"))[cid] == b.node_id  # the record followed the session
        after = await asyncio.to_thread(api_c.get_connection, ConnectionId=cid)
        assert after["ConnectedAt"] == before["ConnectedAt"] and after["Identity"] == before["Identity"]
        assert after["LastActiveAt"] >= before["LastActiveAt"]
        assert _disconnects(cluster, cid) == [] and _connects(cluster, cid) == 1

        # Live traffic flows on the new node; posts through the old one follow the session.
        await asyncio.to_thread(a.management().post_to_connection, ConnectionId=cid, Data=b"after")
        assert await client.recv() == (k + 101, "after")
        await client.close(1000)
        await wait_until(lambda: _disconnects(cluster, cid) == [1000], 5, "$disconnect once, 1000")
        assert error_code(api_c.get_connection, ConnectionId=cid) == "GoneException"


async def test_a_resume_after_the_window_starts_afresh_and_the_old_session_ended_once(cluster: Cluster) -> None:
    a, b, c = await _three(cluster, extra="\n[reliable]\nresume_window_s = 1\n")
    async with CutLink(a.port) as link:
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        old = client.connection_id
        await asyncio.to_thread(c.management().post_to_connection, ConnectionId=old, Data=b"one")
        assert await client.recv() == (1, "one")
        link.cut()
        link.target = b.port
        await wait_until(lambda: _disconnects(cluster, old) == [1006], 5, "$disconnect once, with the drop's 1006")
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is False and hello["connectionId"] != old
        assert _connects(cluster, hello["connectionId"]) == 1  # a fresh connection: $connect ran
        assert error_code(c.management().post_to_connection, ConnectionId=old, Data=b"x") == "GoneException"
        assert error_code(c.management().get_connection, ConnectionId=old) == "GoneException"
        await asyncio.sleep(0.5)
        assert _disconnects(cluster, old) == [1006]


async def test_a_resume_from_a_killed_node_is_refused_cleanly(cluster: Cluster) -> None:
    a, b, c = await _three(cluster)
    async with CutLink(a.port) as link:
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        old = client.connection_id
        await asyncio.to_thread(c.management().post_to_connection, ConnectionId=old, Data=b"one")
        assert await client.recv() == (1, "one")
        link.cut()
        await asyncio.sleep(0.2)  # a holds the dropped session
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        link.target = b.port
        started = time.monotonic()
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert time.monotonic() - started < 3.0  # within the registry's request timeout
        assert hello["resumed"] is False and hello["connectionId"] != old
        await asyncio.to_thread(c.management().post_to_connection, ConnectionId=hello["connectionId"], Data=b"new")
        assert await client.recv() == (1, "new")
        # The dead node's sweep runs the old session's $disconnect once, with 1006.
        await wait_until(lambda: _disconnects(cluster, old) == [1006], 10, "orphan $disconnect")
