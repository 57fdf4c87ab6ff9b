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

Two messages have a compact form, for the cross-node post's hot path: reading one costs
no JSON and no header dict (in this interpreter a dict of six keys costs about as much as
the struct unpacking and the slicing together), and one reply says "ok" to every post of
a batch. A node of a release before them cannot read them, so they are only ever sent to
a node known to read them (rolling upgrades: see :data:`VERSION`)::

    P <r: u64> <d: f64> <b: u8> <len f: u8> <len c: u8> <f> <c> <data>   post
    R <len f: u8> <f> <r: u64> [<r: u64> ...]                           "ok" to each request r

(little-endian, no separators). :func:`decode_message` reads a post, and an "ok" to one
request, into the header the JSON form would give (with ``"w"``); the owner and the asker
read them with :func:`read_post` and :func:`read_ok`.

``w`` (:data:`VERSION`) in a request says that its sender reads the compact forms: its
owner then answers "ok" compactly, and a node that gets a reply with ``w`` (any form)
sends that node its posts compactly. A node of an earlier release never writes ``w`` (and
ignores it): it gets JSON from every node and answers in JSON, and a reply without ``w``
makes a node write JSON to its sender again (a node id taken over by an earlier release).

Several messages to one node within one event-loop iteration leave as one pub/sub payload,
a *batch*: ``*`` (a JSON header never starts with it), then each message as its length (4
bytes, little-endian) and its bytes. :func:`split_batch` returns a payload's messages, one
for a payload that is not a batch, so either form is read the same way.

``r`` is a request id unique within the sender, ``f`` the sender's node id (replies go to
its channel), ``d`` the wall-clock deadline after which the receiver must not act (the
sender has answered 503 by then). Reply status ``s`` is ``ok``, ``gone``, ``limit``,
``moved`` (a reliable session resumed on node ``n`` a moment ago: ask there), ``fail`` or
``dropped`` (the answer to an ask about a request the receiver did not act on, and now never
will). A fan-out is encoded once and the same bytes go to every node; its ``x`` names it
cluster-wide, and a post with ``x`` is that fan-out sent on to a reliable session that moved
(taken once by a session that got it already; a node of an earlier release ignores ``x``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ...records import ConnectionInfo, ConnectionRecord

__all__ = [
    "KIND_ASK",
    "KIND_DELETE",
    "KIND_FANOUT",
    "KIND_GET",
    "KIND_GROUP",
    "KIND_LANDED",
    "KIND_POST",
    "KIND_REPLY",
    "KIND_SURVEY",
    "KIND_TAKE",
    "VERSION",
    "decode_message",
    "encode_batch",
    "encode_message",
    "encode_post",
    "encode_reply",
    "info_from_json",
    "info_to_json",
    "ok_reply",
    "read_ok",
    "read_post",
    "record_from_hash",
    "record_to_hash",
    "split_batch",
]

KIND_POST = "p"
KIND_GET = "g"
KIND_DELETE = "x"
KIND_FANOUT = "f"  # optional "u" (user) or "g" (group) narrows the tenant
KIND_GROUP = "j"  # "g": the group, "j": 1 join / 0 leave
KIND_REPLY = "r"
KIND_TAKE = "s"  # "a": the resume's claim (token, lastSeq, tenant, principal)
KIND_LANDED = "l"  # "h": a move's name; answers "v": 1 if that move of session "c" landed here
KIND_SURVEY = "o"  # "q": the console's query (wsgateway.history)
KIND_ASK = "a"  # the sender lost the reply to request "r": answer it again

# The wire version a node writes in "w": it reads the compact forms.
VERSION = 2

_dumps = orjson.dumps
_loads = orjson.loads
_BATCH = b"*"
_BATCH_BYTE = _BATCH[0]
_LENGTH = struct.Struct("<I")
_pack_length = _LENGTH.pack
_unpack_length = _LENGTH.unpack_from
_POST = struct.Struct("<QdBBB")  # after b"P": r, d, b, len(f), len(c)
_REQUEST_ID = struct.Struct("<Q")
_POST_AT = 1 + _POST.size
_MAX_NAME = 255  # longest f or c a compact form carries (one length byte)


def encode_message(header: Mapping[str, Any], data: bytes = b"") -> bytes:
    """One node message: ``header`` as JSON, a newline, then ``data`` untouched."""
    return _dumps(header) + b"\n" + data


def encode_post(
    request_id: int, sender: str, deadline: float, connection_id: str, binary: int, data: bytes, compact: bool = True
) -> bytes:
    """A post request: in its compact form for a node known to read it (``compact``), else,
    or if a name is too long for it, as JSON saying (``w``) that its sender reads them."""
    if compact:
        name, target = sender.encode(), connection_id.encode()
        if len(name) <= _MAX_NAME and len(target) <= _MAX_NAME:
            return b"".join((b"P", _POST.pack(request_id, deadline, binary, len(name), len(target)), name, target,
                             data))
    header = {"k": KIND_POST, "r": request_id, "f": sender, "d": deadline, "c": connection_id, "b": binary,
              "w": VERSION}
    return encode_message(header, data)


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """A reply: compact if its asker reads it (``w``) and it says "ok" and nothing else."""
    if reply.get("w") and reply["s"] == "ok" and len(reply) == 5:  # k, r, f, s, w
        return ok_reply(reply["f"], (reply["r"],))
    return encode_message(reply)


def decode_message(message: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a node message (JSON or compact) into its header and data; raises ValueError if
    malformed."""
    form = message[:1]
    if form == b"P":
        request_id, sender, deadline, connection_id, binary, data = read_post(message)
        return {"k": KIND_POST, "r": request_id, "f": sender, "d": deadline, "c": connection_id, "b": binary,
                "w": VERSION}, data
    if form == b"R":
        sender, request_ids = read_ok(message)
        if len(request_ids) != 1:
            raise ValueError("an ok to several requests has no header: see read_ok")
        return {"k": KIND_REPLY, "r": request_ids[0], "f": sender, "s": "ok", "w": VERSION}, b""
    head, sep, data = message.partition(b"\n")
    header = _loads(head)
    if not sep or not isinstance(header, dict):
        raise ValueError("not a node message")
    return header, data


def read_post(message: bytes) -> tuple[int, str, float, str, int, bytes]:
    """A compact post's request id, sender, deadline, connection id, binary flag and data,
    read without building its header (the owner's hot path); ValueError if malformed."""
    try:
        request_id, deadline, binary, sender_len, id_len = _POST.unpack_from(message, 1)
    except struct.error as exc:
        raise ValueError("post cut short") from exc
    at = _POST_AT + sender_len
    end = at + id_len
    if end > len(message):
        raise ValueError("post cut short")
    return request_id, message[_POST_AT:at].decode(), deadline, message[at:end].decode(), binary, message[end:]


def ok_reply(sender: str, request_ids: Sequence[int]) -> bytes:
    """The compact reply "ok" to each of ``request_ids`` (one or more), from ``sender``."""
    name = sender.encode()
    if len(name) > _MAX_NAME:  # node ids have at most 64 characters and a worker's suffix
        raise ValueError("node id too long for a compact reply")
    count = len(request_ids)
    ids = _REQUEST_ID.pack(request_ids[0]) if count == 1 else struct.pack(f"<{count}Q", *request_ids)
    return b"R" + bytes((len(name),)) + name + ids


def read_ok(message: bytes) -> tuple[str, tuple[int, ...]]:
    """A compact "ok"'s sender and request ids; ValueError if malformed."""
    at = 2 + message[1] if len(message) > 1 else 0
    count, rest = divmod(len(message) - at, 8)
    if not at or count < 1 or rest:
        raise ValueError("compact ok of the wrong length")
    ids = _REQUEST_ID.unpack_from(message, at) if count == 1 else struct.unpack_from(f"<{count}Q", message, at)
    return message[2:at].decode(), ids


def encode_batch(messages: list[bytes]) -> bytes:
    """Several node messages as one payload (see the module's docstring)."""
    parts = [_BATCH]
    for message in messages:
        parts.append(_pack_length(len(message)))
        parts.append(message)
    return b"".join(parts)


def split_batch(payload: bytes) -> list[bytes]:
    """The node messages in a payload: a batch's, or the payload itself; raises ValueError
    if a batch is cut short (what was whole before the cut is not returned either)."""
    if not payload or payload[0] != _BATCH_BYTE:
        return [payload]
    messages, at, end = [], 1, len(payload)
    while at < end:
        if at + 4 > end:
            raise ValueError("batch cut short in a length")
        (length,) = _unpack_length(payload, at)
        at += 4
        if at + length > end:
            raise ValueError("batch cut short in a message")
        messages.append(payload[at:at + length])
        at += length
    return messages


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
