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
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage

from tests.cluster_support import Cluster, GatewayProcess, error_code, settled, wait_until
from tests.registry_support import RedisLink
from tests.reliable_support import CutLink, ReliableClient
from wsgateway.registry.redis.keys import KeySpace

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


def _kill(node: GatewayProcess) -> None:
    node.process.send_signal(signal.SIGKILL)
    node.process.wait()


def _record(cluster: Cluster, connection_id: str) -> dict[bytes, bytes]:
    return redis.Redis.from_url(cluster.redis_url).hgetall(KeySpace(cluster.key_prefix).record(connection_id))


def _listed(cluster: Cluster, node: GatewayProcess) -> bool:
    """Whether ``node`` is still listed in the cluster (a sweep unlists a dead node)."""
    return bool(redis.Redis.from_url(cluster.redis_url).hexists(KeySpace(cluster.key_prefix).nodes, node.node_id))


# Who is killed, and when: after the holder handed the session over, while its answer is on
# the way (lost with it, or delivered), or once the move landed; the resuming node before the
# answer reaches it, or once the move landed. Each within the holder's 3 s before it settles.
_MOVE_TTL_S = 3.0
_KILLS = ["holder-answer-lost", "holder-answer-delivered", "holder-after-landing",
          "resuming-before-answer", "resuming-after-landing"]


@pytest.mark.parametrize("kill", _KILLS)
async def test_a_node_killed_while_a_session_moves_leaves_one_disconnect(cluster: Cluster, kill: str) -> None:
    """A session held (dropped) on a is resumed on b, and one of them is SIGKILLed inside the
    move: its client's resume is answered as what became of the session, and the session's
    ``$disconnect`` runs exactly once: on a surviving node with 1006 when the node holding
    it died (the sweep), or when it ends on the node that holds it."""
    port = urlsplit(cluster.redis_url).port
    assert port is not None
    async with RedisLink(port) as a_link, CutLink(0) as link:
        # A node TTL past a's slowed link's second (a's beats come that late too).
        a = await cluster.start("a", redis_url=a_link.url, node_ttl_s=_MOVE_TTL_S)
        b, c = await cluster.start_all("b", "c", node_ttl_s=_MOVE_TTL_S)
        for node in (a, b, c):
            await settled(node)
        link.target = a.port
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        cid = client.connection_id
        await asyncio.to_thread(c.management().post_to_connection, ConnectionId=cid, Data=b"one")
        assert await client.recv() == (1, "one")
        link.cut()
        await asyncio.sleep(0.3)  # a holds the dropped session
        token, last_seq = client.token, client.last_seq
        link.target = b.port
        survivor, landed = c, False
        if kill in ("holder-after-landing", "resuming-after-landing"):
            assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True
            landed = True
            _kill(a if kill.startswith("holder") else b)
        else:
            a_link.delay_s = 1.0  # a acts on b's request at once; its answer takes a second
            resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
            await asyncio.sleep(0.4)  # a handed the session over
            if kill == "holder-answer-lost":
                a_link.cut()
            _kill(a if kill.startswith("holder") else b)
            if kill == "resuming-before-answer":
                with pytest.raises((OSError, ConnectionClosed, InvalidHandshake, InvalidMessage, TimeoutError)):
                    await resuming
            else:
                hello = await resuming
                if kill == "holder-answer-lost":
                    assert hello["resumed"] is False
                landed = hello["resumed"]
                if not landed:
                    assert hello["connectionId"] != cid
                    await client.close()
            a_link.delay_s = 0
        dead = a if kill.startswith("holder") else b
        if kill == "resuming-before-answer":
            # The answer never reached b: a settles the move (3 s after it handed the session
            # over) and keeps the session, which the client resumes elsewhere with its old token.
            await wait_until(lambda: _record(cluster, cid).get(b"handover") is not None, 10, "a keeps the session")
            client.connection_id, client.token, client.last_seq = cid, token, last_seq
            hello = await client.connect(ws_url_of(survivor), resume=True)
            assert hello["resumed"] is True and hello["connectionId"] == cid
            await client.close(1000)
            expected = [1000]
        elif landed and kill.startswith("holder"):
            # The move landed on b before a died: b holds the session, a's sweep leaves it.
            await wait_until(lambda: not _listed(cluster, dead), 10, "a swept")
            await asyncio.to_thread(survivor.management().post_to_connection, ConnectionId=cid, Data=b"two")
            assert await client.recv() == (2, "two")
            await client.close(1000)
            expected = [1000]
        else:
            # The node holding the session died with it: the sweep runs its $disconnect.
            expected = [1006]
        await wait_until(lambda: _disconnects(cluster, cid) == expected, 15, f"$disconnect once, {expected}")
        await wait_until(lambda: not _listed(cluster, dead), 10, "the dead node swept")
        await asyncio.sleep(3.5)  # past the settling of every move: no second $disconnect
        assert _disconnects(cluster, cid) == expected
        assert _connects(cluster, cid) == 1
        if expected == [1006]:
            fresh = ReliableClient()
            fresh.connection_id, fresh.token, fresh.last_seq = cid, client.token, client.last_seq
            hello = await fresh.connect(ws_url_of(survivor), resume=True)
            assert hello["resumed"] is False  # the session is gone
            await fresh.close()
            gone = await asyncio.to_thread(error_code, survivor.management().post_to_connection, ConnectionId=cid,
                                           Data=b"x")
            assert gone == "GoneException"


def ws_url_of(node: GatewayProcess, tenant: str = "t1") -> str:
    return f"ws://127.0.0.1:{node.port}/prod?tenant={tenant}"


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
