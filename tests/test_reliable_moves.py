"""A session on its way between nodes as each keeps it (``wsgateway.reliable.moves``): unit
tests, no sockets. The moves themselves (and ``Leaving``, what the node a session leaves
keeps) run end to end in ``test_reliable_sessions.py``."""

from __future__ import annotations

import asyncio
import json

import pytest

from wsgateway.connection import Connection
from wsgateway.errors import GoneError, LimitExceededError, MovedError
from wsgateway.records import ConnectionRecord
from wsgateway.reliable import ReliableConnection
from wsgateway.reliable.moves import Kept, record_from_json, record_json, stop_tracking


def _session(max_unacked: int = 1000) -> ReliableConnection:
    record = ConnectionRecord("cid", "n1", "t1", "u1", 1.0, "127.0.0.1", "ua", {"role": "x"}, "example.com")
    conn = ReliableConnection(record, 0.0, {}, token="tok", max_unacked=max_unacked)
    conn.detach(1006, "")
    return conn


def _data(conn: ReliableConnection) -> list[str]:
    return [json.loads(frame)["data"] for _, frame, _ in conn.frames]


async def test_posts_kept_for_a_session_are_queued_in_order_once_it_is_here() -> None:
    kept, conn = Kept(), _session()
    delivered: list[bytes] = []
    sent_on: list[tuple[bytes, str]] = []

    def deliver(to: Connection, data: bytes, binary: bool) -> None:
        delivered.append(data)
        to.send(data, binary, 0.0, 0)

    def deliver_fanout(to: Connection, data: bytes, binary: bool, fanout_id: str) -> None:
        sent_on.append((data, fanout_id))  # (the host queues it once, by its name)

    first, fanned, given_up, last = (kept.add(b"a", False, 100), kept.add(b"f", False, 100, "n2.7"),
                                     kept.add(b"late", False, 100), kept.add(b"b", False, 100))
    given_up.cancel()  # its sender's deadline passed: never queued, and no longer counted
    await asyncio.sleep(0)  # (told through the future's callback)
    assert kept.size == 3
    kept.deliver(conn, deliver, deliver_fanout)
    assert delivered == [b"a", b"b"] and _data(conn) == ["a", "b"] and sent_on == [(b"f", "n2.7")]
    assert first.result() is None and fanned.result() is None and last.result() is None
    assert kept.posts == [] and kept.size == 0


async def test_kept_posts_are_bounded_and_answered_when_the_session_does_not_come() -> None:
    kept = Kept()
    waiting = kept.add(b"x" * 60, False, 100)
    with pytest.raises(LimitExceededError):
        kept.add(b"y" * 60, False, 100)  # past the session's bound: refused at once
    stayed = kept.add(b"z", False, 100)
    kept.not_here()
    with pytest.raises(GoneError) as gone:
        waiting.result()
    assert not isinstance(gone.value, MovedError)
    again = Kept()
    stays = again.add(b"z", False, 100)
    again.not_here("n1")  # it may have stayed on n1: its senders look there
    with pytest.raises(MovedError) as moved:
        stays.result()
    assert moved.value.node_id == "n1" and isinstance(stayed.exception(), GoneError)


def test_tracking_ends_only_for_the_move_that_began_it() -> None:
    conn = _session()
    first: dict[str, None] = {}
    conn.fanouts = later = {"n1.1": None}  # a later move began its own tracking
    stop_tracking(conn, first)
    assert conn.fanouts is later
    stop_tracking(conn, later)
    assert conn.fanouts is None


def test_the_record_goes_over_as_json_and_comes_back_without_its_node() -> None:
    conn = _session()
    body = json.loads(json.dumps(record_json(conn)))
    back = record_from_json(body)
    assert back.node_id == "" and back.connection_id == "cid" and back.authorizer == {"role": "x"}
    assert back == ConnectionRecord("cid", "", "t1", "u1", 1.0, "127.0.0.1", "ua", {"role": "x"}, "example.com")
    with pytest.raises(KeyError):
        record_from_json({k: v for k, v in body.items() if k != "tenant"})
