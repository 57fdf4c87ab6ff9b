"""The registry contract, written once: every check is a function taking a factory.

``tests/test_registry_memory.py`` and ``tests/test_registry_redis.py`` run :data:`CHECKS`
against their registry (centrifuge's shared broker tests are the model). A factory takes a
:class:`RecordingNode` and returns a started registry serving it.

:class:`RecordingNode` is a small, honest LocalNode: it holds connections in memory, answers
as the gateway's hub would, and records what it was asked. It is a test node, not a mock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from wsgateway.errors import BadRequestError, GoneError, LimitExceededError, MovedError
from wsgateway.fanout import FanoutResult
from wsgateway.ids import new_connection_id
from wsgateway.records import ConnectionInfo, ConnectionRecord
from wsgateway.registry import LocalNode, Registry
from wsgateway.usage import UsageReport

__all__ = ["CHECKS", "Factory", "RecordingNode", "make_record"]


@dataclass
class RecordingNode:
    """A LocalNode holding connections in dicts; ``full`` ids answer LimitExceededError."""

    node_id: str
    connections: dict[str, ConnectionInfo] = field(default_factory=dict)
    posted: dict[str, list[tuple[bytes, bool]]] = field(default_factory=dict)
    fanouts: list[tuple[str, bytes, bool]] = field(default_factory=list)
    fanout_ids: list[str] = field(default_factory=list)  # the name each fan-out came with
    sent_on: list[tuple[str, str]] = field(default_factory=list)  # (connection id, fan-out name) of posts sent on
    deleted: list[str] = field(default_factory=list)
    orphans: list[tuple[ConnectionRecord, int, str]] = field(default_factory=list)
    abandoned: list[tuple[str, int, str]] = field(default_factory=list)
    full: set[str] = field(default_factory=set)
    groups: dict[str, set[str]] = field(default_factory=dict)
    handed: dict[str, str] = field(default_factory=dict)  # sessions handed over: id -> the node they went to
    landing: dict[str, asyncio.Future[None]] = field(default_factory=dict)  # sessions on their way here
    landed: set[str] = field(default_factory=set)  # the names of the moves that landed here
    session_token: str = "right"  # the only claim token its sessions accept
    surveys: list[dict[str, Any]] = field(default_factory=list)
    mute: bool = False  # local_survey fails (a bug on that node)

    def open(self, record: ConnectionRecord, last_active_at: float | None = None) -> ConnectionRecord:
        """Hold ``record`` as an open connection (the hub's side of an accept)."""
        self.connections[record.connection_id] = ConnectionInfo(record, last_active_at or record.connected_at)
        return record

    def touch(self, connection_id: str, at: float) -> None:
        """The connection carried a data frame at ``at``."""
        self.connections[connection_id] = ConnectionInfo(self.connections[connection_id].record, at)

    def local_post(self, connection_id: str, data: bytes, binary: bool, fanout_id: str = "") -> None:
        if fanout_id:
            self.sent_on.append((connection_id, fanout_id))
        if connection_id in self.handed:
            raise MovedError(self.handed[connection_id])
        if connection_id not in self.connections:
            raise GoneError()
        if connection_id in self.full:
            raise LimitExceededError()
        self.posted.setdefault(connection_id, []).append((data, binary))

    def arriving(self, connection_id: str) -> asyncio.Future[None] | None:
        return self.landing.get(connection_id)

    def local_info(self, connection_id: str) -> ConnectionInfo:
        try:
            return self.connections[connection_id]
        except KeyError:
            raise GoneError() from None

    async def local_delete(self, connection_id: str) -> None:
        if connection_id in self.handed:
            raise MovedError(self.handed[connection_id])
        if self.connections.pop(connection_id, None) is None:
            raise GoneError()
        self.deleted.append(connection_id)

    def local_fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> int:
        self.fanouts.append((tenant, data, binary))
        self.fanout_ids.append(fanout_id)
        count = 0
        for info in self.connections.values():
            cid = info.record.connection_id
            if group is not None and group not in self.groups.get(cid, set()):
                continue
            if user is not None and info.record.principal_id != user:
                continue
            if info.record.tenant == tenant:
                self.posted.setdefault(info.record.connection_id, []).append((data, binary))
                count += 1
        return count

    def local_group(self, connection_id: str, group: str, *, join: bool) -> bool:
        if connection_id not in self.connections:
            return False
        members = self.groups.setdefault(connection_id, set())
        if join:
            members.add(group)
        else:
            members.discard(group)
        return True

    def local_connections(self) -> Iterable[ConnectionInfo]:
        return list(self.connections.values())

    def local_survey(self, query: dict[str, Any]) -> dict[str, Any]:
        """Answer the console's query with who answered and what it was asked; a query
        ``{"what": "bad"}`` is one this node does not know (ValueError, as the gateway's)."""
        self.surveys.append(query)
        if query.get("what") == "bad" or self.mute:
            raise ValueError("unknown survey")
        return {"node": self.node_id, "connections": len(self.connections), "query": query}

    async def run_orphan_disconnect(self, record: ConnectionRecord, code: int, reason: str) -> None:
        self.orphans.append((record, code, reason))

    def local_take_session(self, connection_id: str, claim: Mapping[str, Any], to_node: str) -> dict[str, Any]:
        """Hand a held connection over when the claim shows the right token, as the gateway's
        sessions do: it leaves ``connections``, and calls about it are answered "moved"."""
        if connection_id not in self.connections or claim.get("token") != self.session_token:
            raise GoneError()
        del self.connections[connection_id]
        self.handed[connection_id] = to_node
        return {"connectionId": connection_id, "claim": dict(claim)}

    def local_landed(self, connection_id: str, handover: str) -> bool:
        return handover in self.landed

    def abandon(self, connection_ids: Iterable[str], code: int, reason: str) -> int:
        """Close the connections another node claimed, as the gateway does: at once, with no
        ``$disconnect`` here and no registry write (they leave ``connections``)."""
        count = 0
        for connection_id in connection_ids:
            if self.connections.pop(connection_id, None) is not None:
                self.abandoned.append((connection_id, code, reason))
                count += 1
        return count


Factory = Callable[[RecordingNode], Awaitable[Registry]]


def make_record(node_id: str, tenant: str = "tenant-a", **overrides: object) -> ConnectionRecord:
    """A record as the gateway of a cluster builds it, with a fresh connection id that names
    its node (``connection_id=new_connection_id()`` for an id of the plain form)."""
    values: dict[str, object] = {
        "connection_id": new_connection_id(node_id),
        "node_id": node_id,
        "tenant": tenant,
        "principal_id": "user-1",
        "connected_at": time.time(),
        "source_ip": "203.0.113.7",
        "user_agent": "test-agent/1.0",
        # every type an authorizer context may hold, as a dead node's $disconnect needs them back
        "authorizer": {"principalId": "user-1", "role": "admin", "n": 3, "ratio": 0.5, "beta": True},
        "domain_name": "ws.example.com",
    }
    values.update(overrides)
    return ConnectionRecord(**values)  # type: ignore[arg-type]


async def _accept(registry: Registry, node: RecordingNode, record: ConnectionRecord) -> ConnectionRecord:
    node.open(record)
    await registry.add(record)
    return record


async def _close(registry: Registry, node: RecordingNode, record: ConnectionRecord) -> None:
    node.connections.pop(record.connection_id, None)
    assert await registry.remove(record) is True  # nobody else ran its $disconnect


# ---------------------------------------------------------------- the checks


async def check_satisfies_protocol(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    assert isinstance(registry, Registry)
    assert registry.kind in ("memory", "redis")


async def check_health_reachable(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    health = await registry.health()
    assert health["backend"] == registry.kind
    assert health["reachable"] is True


async def check_unknown_connection_is_gone(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    unknown = new_connection_id()
    with pytest.raises(GoneError):
        await registry.post(unknown, b"x", False)
    told: list[BaseException | None] = []

    class Waiter:  # send_post, as the management edge calls it: told once, in a callback
        def posted(self, error: BaseException | None) -> None:
            told.append(error)

    registry.send_post(unknown, b"x", False, Waiter())
    async with asyncio.timeout(5):
        while not told:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(told) == 1 and isinstance(told[0], GoneError)
    with pytest.raises(GoneError):
        await registry.get(unknown)
    with pytest.raises(GoneError):
        await registry.delete(unknown)


async def check_taking_an_unknown_session_is_gone(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    with pytest.raises(GoneError):
        await registry.take_session(new_connection_id(), {"token": "right"})


async def check_own_connection_is_not_served_twice(make: Factory) -> None:
    """The gateway asks the registry only for ids its hub lacks: the registry must not
    deliver to its own node (that would be a second delivery path)."""
    node = RecordingNode("n1")
    registry = await make(node)
    record = await _accept(registry, node, make_record("n1"))
    await _close(registry, node, record)
    with pytest.raises(GoneError):
        await registry.post(record.connection_id, b"x", False)
    assert node.posted == {}


async def check_fanout_without_other_nodes(make: Factory) -> None:
    node = RecordingNode("n1")
    registry = await make(node)
    await _accept(registry, node, make_record("n1", "tenant-a"))
    assert await registry.fanout("tenant-a", b"hello", False) == FanoutResult(0, 0)
    assert await registry.fanout("nobody", b"hello", True) == FanoutResult(0, 0)
    assert node.fanouts == []  # the gateway fans out locally itself


async def check_claim_once_refuses_a_second_claim(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    assert await registry.claim_once("sig-1", 60.0) is True
    assert await registry.claim_once("sig-1", 60.0) is False
    assert await registry.claim_once("sig-2", 60.0) is True  # keys are independent


async def check_claim_once_expires_and_releases(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    assert await registry.claim_once("short", 0.2) is True
    assert await registry.claim_once("short", 0.2) is False
    deadline = time.monotonic() + 3.0
    while not await registry.claim_once("short", 60.0):  # claimable again once expired
        assert time.monotonic() < deadline, "a claim outlived its ttl"
        await asyncio.sleep(0.02)
    assert await registry.claim_once("short", 60.0) is False  # the new claim holds
    await registry.release_once("short")  # its request failed retriably
    assert await registry.claim_once("short", 60.0) is True
    await registry.release_once("never-claimed")  # a no-op


async def check_listing_holds_full_records(make: Factory) -> None:
    node = RecordingNode("n1")
    registry = await make(node)
    records = [await _accept(registry, node, make_record("n1", "tenant-a")) for _ in range(3)]
    await _accept(registry, node, make_record("n1", "tenant-b"))
    active_at = records[0].connected_at + 100.5
    node.touch(records[0].connection_id, active_at)
    page = await registry.list_tenant("tenant-a", 10, None)
    assert page.next_token is None
    assert [i.record for i in page.connections] == sorted(records, key=lambda r: r.connection_id)
    last_active = {i.record.connection_id: i.last_active_at for i in page.connections}
    assert last_active[records[0].connection_id] == active_at
    assert last_active[records[1].connection_id] == records[1].connected_at


async def check_listing_pages_in_id_order(make: Factory) -> None:
    node = RecordingNode("n1")
    registry = await make(node)
    ids = sorted([(await _accept(registry, node, make_record("n1"))).connection_id for _ in range(5)])
    seen: list[str] = []
    token: str | None = None
    sizes = []
    for _ in range(5):
        page = await registry.list_tenant("tenant-a", 2, token)
        sizes.append(len(page.connections))
        seen += [i.record.connection_id for i in page.connections]
        token = page.next_token
        if token is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == ids


async def check_listing_exact_page_has_no_token(make: Factory) -> None:
    node = RecordingNode("n1")
    registry = await make(node)
    for _ in range(2):
        await _accept(registry, node, make_record("n1"))
    page = await registry.list_tenant("tenant-a", 2, None)
    assert len(page.connections) == 2
    assert page.next_token is None
    empty = await registry.list_tenant("nobody", 1000, None)
    assert empty.connections == []
    assert empty.next_token is None


async def check_listing_rejects_bad_input(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    for limit in (0, -1, 1001):
        with pytest.raises(BadRequestError):
            await registry.list_tenant("tenant-a", limit, None)
    for token in ("!!!", "", "a", "AAAA====", "Zm9vIGJhcg"):  # the last is base64 of "foo bar"
        with pytest.raises(BadRequestError):
            await registry.list_tenant("tenant-a", 10, token)


async def check_remove_drops_from_listing(make: Factory) -> None:
    node = RecordingNode("n1")
    registry = await make(node)
    kept = await _accept(registry, node, make_record("n1"))
    gone = await _accept(registry, node, make_record("n1"))
    await _close(registry, node, gone)
    assert await registry.remove(gone) is True  # twice: the second is a no-op
    page = await registry.list_tenant("tenant-a", 10, None)
    assert [i.record.connection_id for i in page.connections] == [kept.connection_id]


async def check_close_is_idempotent(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    await registry.close()
    await registry.close()


async def check_places_hold_caps_per_tenant_and_principal(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    assert [await registry.reserve("t", "alice", 3, 2) for _ in range(3)] == [
        None, None, "max_connections_per_principal"]
    assert await registry.reserve("t", "bob", 3, 2) is None
    assert await registry.reserve("t", "carol", 3, 2) == "max_connections"
    assert await registry.reserve("u", "alice", 3, 2) is None  # another tenant
    assert await registry.held("t") == 3
    await registry.unreserve("t", "alice")
    assert await registry.held("t") == 2
    assert await registry.reserve("t", "carol", 3, 2) is None
    assert await registry.reserve("t", "dave", 0, 0) is None  # 0 = no cap: taken, and counted
    assert await registry.held("t") == 4


async def check_survey_answers_for_this_node(make: Factory) -> None:
    node = RecordingNode("na")
    registry = await make(node)
    await _accept(registry, node, make_record("na"))
    query = {"what": "overview", "since": 0}
    assert await registry.survey(query) == {"na": {"node": "na", "connections": 1, "query": query}}
    assert node.surveys == [query]


async def check_usage_sync_adds_up_the_day(make: Factory) -> None:
    registry = await make(RecordingNode("n1"))
    first = await registry.sync_usage(UsageReport(100, "20261206", {"m:t": 5}, {"t": (4, 1)}))
    assert first.day == {"t": (4, 1)}
    second = await registry.sync_usage(UsageReport(101, "20261206", {"m:t": 2}, {"t": (1, 0), "u": (0, 0)}))
    assert second.day == {"t": (5, 1), "u": (0, 0)}
    assert second.demand.get("m:t") in (2, 5)  # memory: this report's; Redis: window 100's
    assert await registry.usage_today("t", "20261206") == (5, 1)
    assert await registry.usage_today("t", "20261207") == (0, 0)


CHECKS: list[Callable[[Factory], Awaitable[None]]] = [
    check_satisfies_protocol,
    check_health_reachable,
    check_unknown_connection_is_gone,
    check_own_connection_is_not_served_twice,
    check_taking_an_unknown_session_is_gone,
    check_fanout_without_other_nodes,
    check_claim_once_refuses_a_second_claim,
    check_claim_once_expires_and_releases,
    check_listing_holds_full_records,
    check_listing_pages_in_id_order,
    check_listing_exact_page_has_no_token,
    check_listing_rejects_bad_input,
    check_remove_drops_from_listing,
    check_close_is_idempotent,
    check_places_hold_caps_per_tenant_and_principal,
    check_usage_sync_adds_up_the_day,
    check_survey_answers_for_this_node,
]


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms until true; fail with ``what`` after ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


_: type[LocalNode] = RecordingNode
