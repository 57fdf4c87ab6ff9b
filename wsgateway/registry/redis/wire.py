"""What nodes say to each other over Redis, and how a record is stored: pure, no I/O.

A node message is one pub/sub payload: a JSON header, a newline, then the raw data bytes
(JSON escapes control characters, so the first newline always ends the header)::

    {"k":"p","r":7,"f":"nA","c":"<id>","b":0,"d":1767000000.5}\\n<data>    post
    {"k":"g","r":8,"f":"nA","c":"<id>","d":...}                            get
    {"k":"x","r":9,"f":"nA","c":"<id>","d":...}                            delete (close 1000)
    {"k":"f","r":10,"f":"nA","t":"<tenant>","b":1,"d":...}\\n<data>         tenant fan-out
    {"k":"s","r":11,"f":"nA","c":"<id>","a":{<claim>},"d":...}            take a reliable session
    {"k":"r","r":7,"f":"nB","s":"ok"}                                      reply
    {"k":"r","r":8,"f":"nB","s":"ok","i":{<record>,"lastActiveAt":...}}   reply to get
    {"k":"r","r":10,"f":"nB","s":"ok","n":42}                              reply to fan-out
    {"k":"r","r":11,"f":"nB","s":"ok","i":{<session state>}}              reply to take
    {"k":"r","r":7,"f":"nB","s":"moved","n":"nC"}                          the session moved to nC
    {"k":"o","r":11,"f":"nA","q":{"what":"tenants"},"d":...}               console survey
    {"k":"r","r":11,"f":"nB","s":"ok","v":{...}}                            reply to a survey
    {"k":"a","r":7,"f":"nA","d":...}                                       ask again: the outcome of request 7

``r`` is a request id unique within the sender, ``f`` the sender's node id (replies go to
its channel), ``d`` the wall-clock deadline after which the receiver must not act (the
sender has answered 503 by then). Reply status ``s`` is ``ok``, ``gone``, ``limit``,
``moved`` (a reliable session resumed on node ``n`` a moment ago: ask there), ``fail`` or
``dropped`` (the answer to an ask about a request the receiver did not act on, and now never
will). A fan-out is encoded once and the same bytes go to every node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ...records import ConnectionInfo, ConnectionRecord

__all__ = [
    "KIND_ASK",
    "KIND_DELETE",
    "KIND_FANOUT",
    "KIND_GET",
    "KIND_GROUP",
    "KIND_POST",
    "KIND_REPLY",
    "KIND_SURVEY",
    "KIND_TAKE",
    "decode_message",
    "encode_message",
    "info_from_json",
    "info_to_json",
    "record_from_hash",
    "record_to_hash",
]

KIND_POST = "p"
KIND_GET = "g"
KIND_DELETE = "x"
KIND_FANOUT = "f"  # optional "u" (user) or "g" (group) narrows the tenant
KIND_GROUP = "j"  # "g": the group, "j": 1 join / 0 leave
KIND_REPLY = "r"
KIND_TAKE = "s"  # "a": the resume's claim (token, lastSeq, tenant, principal)
KIND_SURVEY = "o"  # "q": the console's query (wsgateway.history)
KIND_ASK = "a"  # the sender lost the reply to request "r": answer it again

_dumps = orjson.dumps
_loads = orjson.loads


def encode_message(header: Mapping[str, Any], data: bytes = b"") -> bytes:
    """One node message: ``header`` as JSON, a newline, then ``data`` untouched."""
    return _dumps(header) + b"\n" + data


def decode_message(message: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a node message into its header and data; raises ValueError if malformed."""
    head, sep, data = message.partition(b"\n")
    header = _loads(head)
    if not sep or not isinstance(header, dict):
        raise ValueError("not a node message")
    return header, data


def record_to_hash(record: ConnectionRecord, last_active_at: float) -> dict[str, str]:
    """The fields of a record's HASH (flat strings, as HSET takes them)."""
    return {
        "node": record.node_id,
        "tenant": record.tenant,
        "principal": record.principal_id,
        "connectedAt": repr(record.connected_at),
        "lastActiveAt": repr(last_active_at),
        "sourceIp": record.source_ip,
        "userAgent": record.user_agent,
        "authorizer": _dumps(dict(record.authorizer)).decode(),
        "domainName": record.domain_name,
    }


def record_from_hash(connection_id: str, fields: Mapping[bytes, bytes]) -> ConnectionInfo:
    """Rebuild a record's info from its HASH (as HGETALL returns it); KeyError if incomplete."""
    get = fields.__getitem__
    record = ConnectionRecord(
        connection_id=connection_id,
        node_id=get(b"node").decode(),
        tenant=get(b"tenant").decode(),
        principal_id=get(b"principal").decode(),
        connected_at=float(get(b"connectedAt")),
        source_ip=get(b"sourceIp").decode(),
        user_agent=get(b"userAgent").decode(),
        authorizer=_loads(fields.get(b"authorizer", b"{}")),
        domain_name=fields.get(b"domainName", b"").decode(),
    )
    return ConnectionInfo(record, float(fields.get(b"lastActiveAt", get(b"connectedAt"))))


def info_to_json(info: ConnectionInfo) -> dict[str, Any]:
    """A connection's info as a reply carries it (the answer to a remote get)."""
    rec = info.record
    return {
        "c": rec.connection_id,
        "node": rec.node_id,
        "tenant": rec.tenant,
        "principal": rec.principal_id,
        "connectedAt": rec.connected_at,
        "lastActiveAt": info.last_active_at,
        "sourceIp": rec.source_ip,
        "userAgent": rec.user_agent,
        "authorizer": dict(rec.authorizer),
        "domainName": rec.domain_name,
    }


def info_from_json(body: Mapping[str, Any]) -> ConnectionInfo:
    """Inverse of :func:`info_to_json`; KeyError or TypeError if malformed."""
    record = ConnectionRecord(
        connection_id=body["c"],
        node_id=body["node"],
        tenant=body["tenant"],
        principal_id=body["principal"],
        connected_at=float(body["connectedAt"]),
        source_ip=body["sourceIp"],
        user_agent=body["userAgent"],
        authorizer=body["authorizer"],
        domain_name=body["domainName"],
    )
    return ConnectionInfo(record, float(body["lastActiveAt"]))
