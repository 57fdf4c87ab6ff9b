"""Route handlers the end-to-end tests point their routes at.

They record every event they see in ``EVENTS`` (in-process nodes) so tests can assert on the
exact Lambda-proxy events the gateway built, and they behave as the query string of the
connect request asks (``connect=403``, ``connect=raise``, ``connect=slow``...).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from wsgateway import Disconnect, GoneError

EVENTS: list[dict[str, Any]] = []


def events_of(route_key: str, connection_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in EVENTS
        if e["requestContext"]["routeKey"] == route_key
        and (connection_id is None or e["requestContext"]["connectionId"] == connection_id)
    ]


async def on_connect(event: dict[str, Any], context: Any) -> Any:
    EVENTS.append(event)
    mode = (event.get("queryStringParameters") or {}).get("connect", "")
    if mode == "raise":
        raise RuntimeError("secret internal detail")
    if mode == "slow":
        await asyncio.sleep(60)
    if mode == "pause":  # accepts, but late: concurrent handshakes pile up meanwhile
        await asyncio.sleep(0.5)
    if mode == "post_self":
        try:
            await context.post_to_connection(event["requestContext"]["connectionId"], "hello")
        except GoneError:
            return {"statusCode": 200, "headers": {"X-Post-Result": "410"}}
        return {"statusCode": 500}
    if mode == "subprotocol":
        return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "chat.v2"}}
    if mode == "exit":  # sys.exit() in a handler: fails this handshake, never the node
        raise SystemExit(3)
    if mode == "surrogate_body":  # a body no UTF-8 can carry
        return {"statusCode": 403, "body": "go \ud800 away"}
    if mode == "bad_status":
        return {"statusCode": "nope"}
    if mode.isdigit():
        return {"statusCode": int(mode), "body": "go away"}
    return {"statusCode": 200}


async def on_disconnect(event: dict[str, Any], context: Any) -> None:
    EVENTS.append(event)


async def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    EVENTS.append(event)
    return {"statusCode": 200, "body": event["body"], "isBase64Encoded": event["isBase64Encoded"]}


async def whoami(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = event["requestContext"]
    return {"statusCode": 200, "body": json.dumps({"connectionId": ctx["connectionId"], "authorizer": ctx["authorizer"]})}


async def event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    EVENTS.append(event)
    return {"statusCode": 200, "body": json.dumps(event)}


async def boom(event: dict[str, Any], context: Any) -> None:
    raise ValueError("secret internal detail")


async def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    await asyncio.sleep(60)
    return {"statusCode": 200, "body": "too late"}


def sync_echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(0.01)  # blocking work: runs in the thread pool, not on the loop
    context.run(context.post_to_connection(context.connection_id, "from thread"))
    return {"statusCode": 200, "body": "sync:" + event["body"]}


async def push_self(event: dict[str, Any], context: Any) -> None:
    await context.post_to_connection(event["requestContext"]["connectionId"], "pushed")
    info = await context.get_connection(event["requestContext"]["connectionId"])
    await context.post_to_connection(event["requestContext"]["connectionId"], json.dumps(info))


async def push_tenant(event: dict[str, Any], context: Any) -> dict[str, Any]:
    n = await context.post_to_tenant(event["requestContext"]["authorizer"]["tenant"], "tenant-wide")
    try:
        await context.post_to_connection("AAAAAAAAAAAAAAAA", "x")
    except GoneError:
        gone = True
    else:
        gone = False
    return {"statusCode": 200, "body": json.dumps({"delivered": n.delivered, "gone": gone})}


async def bye(event: dict[str, Any], context: Any) -> None:
    raise Disconnect(4000, "bye now")


async def disconnects(event: dict[str, Any], context: Any) -> None:
    """{"action": "disconnects", "code": C, "reason": R}: raise Disconnect(C, R) as given."""
    body = json.loads(event["body"])
    raise Disconnect(body["code"], body.get("reason", ""))


async def returns_none(event: dict[str, Any], context: Any) -> None:
    return None


async def unsendable(event: dict[str, Any], context: Any) -> Any:
    """{"action": "unsendable", "kind": K}: return a body no frame can carry."""
    kind = json.loads(event["body"])["kind"]
    if kind == "base64":
        return {"statusCode": 200, "body": "!!!not base64", "isBase64Encoded": True}
    if kind == "surrogate":  # e.g. a client's own "\ud800" echoed back: valid JSON, not UTF-8
        return {"statusCode": 200, "body": "hello \ud800"}
    if kind == "bare_surrogate":
        return "hello \ud800"
    return {"statusCode": 200, "body": {1, 2}}  # no JSON for a set


async def join(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """{"action": "join", "group": "g"}: add this connection to a group of its tenant."""
    group = json.loads(event["body"])["group"]
    await context.join_group(event["requestContext"]["connectionId"], group)
    return {"statusCode": 200, "body": "joined " + group}


async def tell_group(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = json.loads(event["body"])
    tenant = event["requestContext"]["authorizer"]["tenant"]
    n = await context.post_to_group(tenant, body["group"], body["text"])
    m = await context.post_to_user(tenant, event["requestContext"]["authorizer"]["principalId"], "to my tabs")
    return {"statusCode": 200, "body": json.dumps({"group": n.delivered, "user": m.delivered})}


def sync_slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(1.0)  # a blocking handler past its limit: abandoned in its thread
    return {"statusCode": 200, "body": "too late"}


async def exits(event: dict[str, Any], context: Any) -> None:
    """A handler that calls sys.exit() (or lets a library's reach us), or is interrupted."""
    mode = json.loads(event["body"]).get("mode", "exit") if event.get("body") else "exit"
    raise KeyboardInterrupt if mode == "interrupt" else SystemExit(3)


def sync_exits(event: dict[str, Any], context: Any) -> None:
    raise SystemExit(3)
