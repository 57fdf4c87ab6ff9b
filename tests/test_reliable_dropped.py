"""The bounds on a node's dropped sessions (``wsgateway.reliable.dropped``), without sockets."""

from __future__ import annotations

from itertools import count

from wsgateway.records import ConnectionRecord
from wsgateway.reliable import ReliableConnection
from wsgateway.reliable.dropped import Dropped

_ids = count(1)


def _session(tenant: str) -> ReliableConnection:
    record = ConnectionRecord(
        connection_id=f"c{next(_ids)}=", node_id="n", tenant=tenant, principal_id="p", connected_at=0.0,
        source_ip="", user_agent="", authorizer={}, domain_name="",
    )
    return ReliableConnection(record, 0.0, {}, token="t", max_unacked=1024)


def test_a_capped_tenant_keeps_its_newest_up_to_its_cap() -> None:
    dropped = Dropped(pool=100)
    sessions = [_session("capped") for _ in range(7)]
    ended = [gone for conn in sessions for gone in dropped.add(conn, cap=5)]
    assert ended == sessions[:2]  # oldest first, each the moment it was one too many
    assert dropped.of("capped") == sessions[2:] and len(dropped) == 5


def test_tenants_without_a_cap_share_the_pool_and_the_largest_gives_way() -> None:
    dropped = Dropped(pool=3)
    a = [_session("a") for _ in range(3)]
    assert [gone for conn in a for gone in dropped.add(conn, cap=0)] == []
    b = _session("b")
    assert dropped.add(b, cap=0) == [a[0]]  # a holds the most: its oldest ends, not b's only one
    capped = [_session("capped") for _ in range(2)]
    assert [gone for conn in capped for gone in dropped.add(conn, cap=5)] == []  # not in the pool
    assert dropped.of("a") == a[1:] and dropped.of("b") == [b] and len(dropped) == 5


def test_a_session_removed_or_touched_changes_what_ends_next() -> None:
    dropped = Dropped(pool=100)
    first, second, third = (_session("t") for _ in range(3))
    for conn in (first, second, third):
        dropped.add(conn, cap=3)
    dropped.remove(second)  # resumed
    dropped.remove(second)  # idempotent
    dropped.touch(first)  # being resumed: last to end
    assert dropped.of("t") == [third, first]
    fourth, fifth = _session("t"), _session("t")
    assert dropped.add(fourth, cap=3) == []
    assert dropped.add(fifth, cap=3) == [third]


def test_a_tenant_whose_plan_changes_moves_in_or_out_of_the_pool() -> None:
    dropped = Dropped(pool=2)
    x1, x2 = _session("x"), _session("x")
    dropped.add(x1, cap=10)
    dropped.add(x2, cap=10)
    y1 = _session("y")
    assert dropped.add(y1, cap=0) == []  # x is capped: the pool holds y1 only
    x3 = _session("x")
    assert dropped.add(x3, cap=0) == [x1, x2]  # x lost its cap (a reload): 4 in a pool of 2
    assert dropped.of("x") == [x3] and dropped.of("y") == [y1]
    x4 = _session("x")
    assert dropped.add(x4, cap=1) == [x3]  # capped again: out of the pool, its own cap applies
    assert dropped.add(_session("z"), cap=0) == []  # the pool holds y1 and z
