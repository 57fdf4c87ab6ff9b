"""Reliable connections across three gateway processes on one private Redis: a client's link
dies (a real TCP cut, by :class:`tests.reliable_support.CutLink`), backends keep posting
through boto3 to any node, and the client resumes on another node under the same id; and a
storm of such resumes, nodes drawn at random, while backends post and fan out.

Handlers (``tests.cluster_handlers``) append every ``$connect``/``$disconnect`` to a file, since
the nodes are other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

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


class _Stormed:
    """One reliable client of a resume storm: its link, what it received and how it resumed."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.client = ReliableClient()
        self.resumed: list[bool] = []
        self.reader: asyncio.Future[None] | None = None

    @property
    def received(self) -> list[str]:
        return [data for _, data in self.client.received]

    def read(self) -> None:
        async def until_closed() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.client.recv(timeout=600)

        self.reader = asyncio.ensure_future(until_closed())


async def _storm(stormed: _Stormed, link: CutLink, ports: list[int], resumes: int, rng: random.Random) -> None:
    """Cut the client's link ``resumes`` times, each time resuming on a node drawn at random."""
    for _ in range(resumes):
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        link.cut()
        assert stormed.reader is not None
        await stormed.reader
        link.target = rng.choice(ports)
        hello = await stormed.client.connect(link.url(tenant="t1"), resume=True)
        stormed.resumed.append(hello["resumed"] is True and hello["connectionId"] == stormed.client.connection_id)
        stormed.read()


async def test_a_resume_storm_loses_nothing_and_ends_each_session_once(cluster: Cluster) -> None:
    """Sessions resume again and again on nodes drawn at random while backends post to each
    through any node and fan out to their tenant: each session receives every post answered
    200 (and no other) once, in the order posted, and every fan-out once, in order; each
    resume is granted; each session's $disconnect runs once, when its client closes."""
    nodes = await _three(cluster)
    ports = [node.port for node in nodes]
    rng = random.Random(7)
    sessions = [_Stormed(i) for i in range(10)]
    posted: dict[int, list[tuple[str, int]]] = {s.index: [] for s in sessions}
    fanned: list[tuple[str, int, int]] = []  # data, status, unreachable nodes
    stop = asyncio.Event()

    async def poster(http: aiohttp.ClientSession, stormed: _Stormed) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            data = f"p{stormed.index}:{i}"
            url = f"{rng.choice(nodes).endpoint}/@connections/{stormed.client.connection_id}"
            async with http.post(url, data=data) as resp:
                posted[stormed.index].append((data, resp.status))
            await asyncio.sleep(0.01)

    async def fanner(http: aiohttp.ClientSession) -> None:
        j = 0
        while not stop.is_set():
            j += 1
            async with http.post(f"{rng.choice(nodes).endpoint}/@tenants/t1/messages", data=f"f{j}") as resp:
                body = await resp.json() if resp.status == 200 else {}
                fanned.append((f"f{j}", resp.status, int(body.get("unreachableNodes", 0))))
            await asyncio.sleep(0.03)

    async with contextlib.AsyncExitStack() as stack:
        links = [await stack.enter_async_context(CutLink(ports[s.index % 3])) for s in sessions]
        for stormed, link in zip(sessions, links, strict=True):
            await stormed.client.connect(link.url(tenant="t1"))
            stormed.read()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        background = [asyncio.ensure_future(poster(http, s)) for s in sessions] + [asyncio.ensure_future(fanner(http))]
        await asyncio.gather(*(_storm(s, link, ports, 12, rng) for s, link in zip(sessions, links, strict=True)))
        stop.set()
        await asyncio.gather(*background)

        def everything_arrived() -> bool:
            return all(
                {d for d, status in posted[s.index] if status == 200} <= set(s.received)
                and {d for d, status, unreachable in fanned if status == 200 and not unreachable} <= set(s.received)
                for s in sessions
            )

        await wait_until(everything_arrived, 20, "every post answered 200 and every fan-out")
        await asyncio.sleep(0.5)  # anything sent twice would show by now
        for stormed in sessions:
            assert all(stormed.resumed), stormed.resumed
            got = stormed.received
            posts = [d for d in got if d.startswith("p")]
            assert posts == [d for d, status in posted[stormed.index] if status == 200], (
                stormed.index, posted[stormed.index], posts)
            fanouts = [d for d in got if d.startswith("f")]
            assert fanouts == sorted(set(fanouts), key=lambda d: int(d[1:])), fanouts  # once each, in order
            await stormed.client.close(1000)
        for stormed in sessions:
            cid = stormed.client.connection_id
            await wait_until(lambda cid=cid: _disconnects(cluster, cid) == [1000], 10, "$disconnect once, 1000")
            assert _connects(cluster, cid) == 1
        await asyncio.sleep(0.5)
        assert all(_disconnects(cluster, s.client.connection_id) == [1000] for s in sessions)
