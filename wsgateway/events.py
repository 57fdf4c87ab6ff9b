"""Builds AWS WebSocket Lambda-proxy events; pure functions, no I/O.

Shapes follow the captures in ``shared/reference/aws-websocket-api.md`` §2.6: ``$connect``
carries the upgrade request's headers and query string, messages carry ``body`` and
``messageId``, ``$disconnect`` carries minimal headers and the close code and reason.
The per-connection part of ``requestContext`` is built once at connect
(:func:`context_base`) and copied into every later event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .records import ConnectionRecord

__all__ = ["authorizer_event", "connect_event", "context_base", "disconnect_event", "message_context",
           "message_event", "request_time"]

_clf_cache: list[Any] = [-1, ""]


def request_time(epoch_s: float) -> str:
    """``requestTime`` in AWS's CLF form, e.g. ``20/Jan/2024:11:55:00 +0000`` (cached per second)."""
    second = int(epoch_s)
    if _clf_cache[0] != second:
        _clf_cache[0] = second
        _clf_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return _clf_cache[1]  # type: ignore[no-any-return]


def context_base(record: ConnectionRecord, *, stage: str, api_id: str) -> dict[str, Any]:
    """The ``requestContext`` fields that stay fixed for a connection's lifetime."""
    identity = {"sourceIp": record.source_ip}
    if record.user_agent:
        identity["userAgent"] = record.user_agent
    return {
        "stage": stage,
        "domainName": record.domain_name,
        "apiId": api_id,
        "connectionId": record.connection_id,
        "connectedAt": int(record.connected_at * 1000),
        "identity": identity,
        # Shared with the record (never mutated): every event copies it before use.
        "authorizer": record.authorizer,
    }


def _context(
    base: Mapping[str, Any], route_key: str, event_type: str, request_id: str, epoch_s: float
) -> dict[str, Any]:
    """The ``requestContext`` of one event: ``base`` (from :func:`context_base`) and the
    event's own fields, in one dict display (every message builds one)."""
    return {
        "stage": base["stage"],
        "domainName": base["domainName"],
        "apiId": base["apiId"],
        "connectionId": base["connectionId"],
        "connectedAt": base["connectedAt"],
        # Copies, so that a handler that edits its event cannot change the next one.
        "identity": dict(base["identity"]),
        "authorizer": dict(base["authorizer"]),
        "routeKey": route_key,
        "eventType": event_type,
        "requestId": request_id,
        "extendedRequestId": request_id,
        "requestTime": request_time(epoch_s),
        "requestTimeEpoch": int(epoch_s * 1000),
        "messageDirection": "IN",
    }


def connect_event(
    base: Mapping[str, Any],
    *,
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]],
    request_id: str,
    epoch_s: float,
) -> dict[str, Any]:
    """The ``$connect`` event: upgrade headers in original case, query string if any."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    event: dict[str, Any] = {
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": _context(base, "$connect", "CONNECT", request_id, epoch_s),
        "isBase64Encoded": False,
    }
    if query:
        qs: dict[str, str] = {}
        mqs: dict[str, list[str]] = {}
        for name, value in query:
            qs[name] = value
            mqs.setdefault(name, []).append(value)
        event["queryStringParameters"] = qs
        event["multiValueQueryStringParameters"] = mqs
    return event


def authorizer_event(
    *,
    method_arn: str,
    token: str,
    connection_id: str,
    stage: str,
    api_id: str,
    domain_name: str,
    source_ip: str,
    user_agent: str,
    headers: Sequence[tuple[str, str]],
    query: Sequence[tuple[str, str]],
    request_id: str,
    epoch_s: float,
) -> dict[str, Any]:
    """AWS's REQUEST authorizer event for ``$connect``, plus ``authorizationToken`` (``token``).

    The ``$connect`` event's headers, query maps (empty ``{}`` without a query string, as AWS
    sends them) and CONNECT ``requestContext`` (without ``authorizer``: none ran yet).
    """
    identity = {"sourceIp": source_ip}
    if user_agent:
        identity["userAgent"] = user_agent
    base = {
        "stage": stage, "domainName": domain_name, "apiId": api_id, "connectionId": connection_id,
        "connectedAt": int(epoch_s * 1000), "identity": identity, "authorizer": {},
    }
    event = connect_event(base, headers=headers, query=query, request_id=request_id, epoch_s=epoch_s)
    del event["requestContext"]["authorizer"]
    return {
        "type": "REQUEST",
        "methodArn": method_arn,
        "authorizationToken": token,
        "headers": event["headers"],
        "multiValueHeaders": event["multiValueHeaders"],
        "queryStringParameters": event.get("queryStringParameters", {}),
        "multiValueQueryStringParameters": event.get("multiValueQueryStringParameters", {}),
        "stageVariables": {},
        "requestContext": event["requestContext"],
    }


def message_context(base: Mapping[str, Any]) -> dict[str, Any]:
    """The ``requestContext`` every ``MESSAGE`` event of a connection starts from: ``base``'s
    fields and the event's own in :func:`_context`'s order, the per-message ones empty.

    Copying it and setting those is cheaper than building a 15-key dict per message; the
    dispatcher makes it at a connection's first message (an idle connection holds none)."""
    return {
        "stage": base["stage"],
        "domainName": base["domainName"],
        "apiId": base["apiId"],
        "connectionId": base["connectionId"],
        "connectedAt": base["connectedAt"],
        "identity": base["identity"],  # shared with base: message_event puts copies in events
        "authorizer": dict(base["authorizer"]),  # the record's Mapping as a dict, copied once here
        "routeKey": "",
        "eventType": "MESSAGE",
        "requestId": "",
        "extendedRequestId": "",
        "requestTime": "",
        "requestTimeEpoch": 0,
        "messageDirection": "IN",
        "messageId": "",
    }


def message_event(
    context: dict[str, Any], route_key: str, body: str, is_base64: bool, request_id: str, epoch_ms: int
) -> dict[str, Any]:
    """A ``MESSAGE`` event for a text frame (``body`` as text) or a binary one (base64), its
    ``requestContext`` a copy of ``context`` (:func:`message_context`) with this message's
    fields set, at ``epoch_ms`` (wall clock, ms). Every client message builds one: the
    dispatcher passes the arguments by position (a call with keywords costs more) and the
    time in integer ms (``time.time_ns() // 1_000_000``: ``int()`` of a float is a class
    call), and the CLF cache is read inline."""
    ctx = context.copy()
    # Copies, so that a handler that edits its event cannot change the next one.
    ctx["identity"] = ctx["identity"].copy()
    ctx["authorizer"] = ctx["authorizer"].copy()
    ctx["routeKey"] = route_key
    ctx["requestId"] = ctx["extendedRequestId"] = ctx["messageId"] = request_id
    second = epoch_ms // 1000
    ctx["requestTime"] = _clf_cache[1] if _clf_cache[0] == second else request_time(second)
    ctx["requestTimeEpoch"] = epoch_ms
    return {"requestContext": ctx, "body": body, "isBase64Encoded": is_base64}


def disconnect_event(
    base: Mapping[str, Any], *, code: int, reason: str, request_id: str, epoch_s: float
) -> dict[str, Any]:
    """The ``$disconnect`` event with AWS's minimal headers and the close code and reason."""
    ctx = _context(base, "$disconnect", "DISCONNECT", request_id, epoch_s)
    ctx["disconnectStatusCode"] = code
    ctx["disconnectReason"] = reason
    host = base.get("domainName") or ""
    headers = {"Host": host, "x-api-key": "", "X-Forwarded-For": base["identity"]["sourceIp"], "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": ctx,
        "isBase64Encoded": False,
    }
