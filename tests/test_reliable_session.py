"""One reliable session's numbering, buffer and handover state (``wsgateway.reliable.session``),
while dropped (no socket): unit tests, no sockets. The attached path runs end to end in
``test_reliable_sessions.py``."""

from __future__ import annotations

import json

import pytest

from wsgateway.connection import MAX_FANOUT_NAMES
from wsgateway.errors import GoneError, LimitExceededError
from wsgateway.hub import Hub
from wsgateway.records import ConnectionRecord
from wsgateway.reliable import ReliableConnection


def _session(max_unacked: int = 1000) -> ReliableConnection:
    record = ConnectionRecord("cid", "n1", "t1", "u1", 1.0, "127.0.0.1", "ua")
    conn = ReliableConnection(record, 0.0, {}, token="tok", max_unacked=max_unacked)
    conn.detach(1006, "")
    return conn


def _seqs(conn: ReliableConnection) -> list[int]:
    return [seq for seq, _, _ in conn.frames]


def test_a_dropped_session_numbers_and_keeps_what_it_is_sent() -> None:
    conn = _session()
    for text in ("a", "b", "c"):
        conn.send(text.encode(), False, 1.0, 0)
    assert _seqs(conn) == [1, 2, 3] and conn.seq == 3
    assert [json.loads(frame)["data"] for _, frame, _ in conn.frames] == ["a", "b", "c"]
    assert conn.unacked_bytes == sum(len(frame) for _, frame, _ in conn.frames)
    assert conn.own_frames and conn.dropped and conn.over_since is None


def test_acks_free_the_buffer_and_may_not_pass_the_last_seq() -> None:
    conn = _session()
    for _ in range(3):
        conn.send(b"x", False, 1.0, 0)
    conn.ack(2)
    assert _seqs(conn) == [3]
    conn.ack(1)  # older acks change nothing
    assert _seqs(conn) == [3]
    with pytest.raises(ValueError):
        conn.ack(4)
    conn.ack(3)
    assert conn.unacked_bytes == 0 and not conn.frames
    conn.send(b"yy", False, 1.0, 0)
    conn.ack(3)  # nothing new
    assert conn.unacked_bytes == len(conn.frames[0][1]) and _seqs(conn) == [4]


def test_past_the_limit_a_write_is_refused_and_nothing_is_numbered() -> None:
    conn = _session(max_unacked=100)
    conn.send(b"x" * 40, False, 1.0, 0)
    with pytest.raises(LimitExceededError):
        conn.send(b"x" * 40, False, 1.0, 0)
    assert conn.seq == 1 and conn.over_since is None  # dropped: 429, no slow-consumer clock
    conn.ack(1)
    conn.send(b"x" * 40, False, 1.0, 0)
    assert conn.seq == 2


def test_a_resume_may_start_anywhere_between_the_last_ack_and_the_last_seq() -> None:
    conn = _session()
    for _ in range(5):
        conn.send(b"x", False, 1.0, 0)
    conn.ack(2)
    assert [n for n in range(-1, 8) if conn.can_resume(n)] == [2, 3, 4, 5]
    assert _session().can_resume(0) and not _session().can_resume(1)


def test_an_ended_session_takes_nothing() -> None:
    conn = _session()
    conn.ending = True
    with pytest.raises(GoneError):
        conn.send(b"x", False, 1.0, 0)


def test_shared_frames_are_refused() -> None:
    with pytest.raises(TypeError):
        _session().send_frame(b"frame", 1.0, 0)


def test_a_handed_over_session_carries_on_where_it_was() -> None:
    conn = _session()
    conn.groups = {"g2", "g1"}
    for text in ("a", "b", "c"):
        conn.send(text.encode(), False, 1.0, 0)
    conn.ack(1)
    state = json.loads(json.dumps(conn.export()))  # it travels as JSON
    moved = ReliableConnection(conn.record, 0.0, {}, token="", max_unacked=1000)
    moved.detach(0, "")
    assert moved.restore(state) == ["g1", "g2"]
    assert (moved.seq, moved.token, [f[:2] for f in moved.frames], moved.unacked_bytes) == (
        conn.seq, "tok", [f[:2] for f in conn.frames], conn.unacked_bytes)
    assert (moved.drop_code, moved.drop_reason) == (1006, "")
    moved.send(b"d", False, 1.0, 0)
    assert _seqs(moved) == [2, 3, 4]
    with pytest.raises(KeyError):
        moved.restore({"seq": 1})
    with pytest.raises(ValueError):  # a gap in the seqs
        moved.restore({**state, "frames": [[2, "x"], [4, "y"]]})


def test_a_drop_stops_the_slow_consumer_clock() -> None:
    conn = _session()
    conn.over_since = 5.0  # it was over the limit while connected
    conn.detach(1006, "")
    assert conn.over_since is None
    assert conn.check_queue(100.0, 1000, 1.0) is False


def test_a_session_that_moved_takes_each_named_fan_out_once() -> None:
    """Only while it keeps track (a while after a move); the hub and the node's post path
    skip what it already took."""
    conn = _session()
    hub = Hub()
    hub.add(conn)
    assert hub.fanout("t1", b"a", False, 1.0, 0, fanout_id="n1.1") == 1
    assert not conn.already_took("n1.1")  # not keeping track: every copy is queued
    conn.fanouts = {}
    for _ in range(2):
        hub.fanout("t1", b"b", False, 1.0, 0, fanout_id="n1.2")
    hub.fanout("t1", b"c", False, 1.0, 0)  # a fan-out without a name is always queued
    assert [json.loads(frame)["data"] for _, frame, _ in conn.frames] == ["a", "b", "c"]
    assert conn.already_took("n1.2") and conn.already_took("n2.7") is False and conn.already_took("n2.7")


def test_a_session_keeping_track_of_fan_outs_keeps_the_newest_names_only() -> None:
    """A session that just moved takes each fan-out once, by name; however many its tenant
    fans out meanwhile, it keeps the newest ``MAX_FANOUT_NAMES`` (the hub asks it, once each)."""
    conn = _session(max_unacked=1 << 30)
    assert not conn.already_took("n.0") and conn.fanouts is None  # keeps no track: takes everything
    conn.fanouts = {}
    names = [f"n.{i}" for i in range(MAX_FANOUT_NAMES + 100)]
    hub = Hub()
    hub.add(conn)
    for name in names:
        assert hub.fanout("t1", b"x", False, 0.0, 1 << 20, fanout_id=name) == 1
    assert hub.fanout("t1", b"x", False, 0.0, 1 << 20, fanout_id=names[-1]) == 0  # taken once
    assert list(conn.fanouts) == names[100:]  # the newest, oldest first
    assert conn.already_took(names[100]) and not conn.already_took(names[0])  # forgotten: taken again
    assert len(conn.fanouts) == MAX_FANOUT_NAMES
