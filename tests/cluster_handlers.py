"""Handlers for the multi-process cluster tests (``tests/test_cluster.py``).

Each gateway node is a separate process, so events cannot be kept in memory: every event is
appended as one JSON line to the file named by ``WSGW_CLUSTER_EVENTS``, which the test reads.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

__all__ = ["echo", "on_connect", "on_disconnect", "whoami"]


def _record(event: dict[str, Any]) -> None:
    ctx = event["requestContext"]
    line = orjson.dumps({
        "routeKey": ctx["routeKey"],
        "connectionId": ctx["connectionId"],
        "disconnectStatusCode": ctx.get("disconnectStatusCode"),
        "authorizer": ctx.get("authorizer"),
        "pid": os.getpid(),
    })
    # one write of a line shorter than PIPE_BUF on an O_APPEND file: lines never interleave
    with open(os.environ["WSGW_CLUSTER_EVENTS"], "ab") as file:
        file.write(line + b"\n")


async def on_connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _record(event)
    return {"statusCode": 200}


async def on_disconnect(event: dict[str, Any], context: Any) -> None:
    _record(event)


async def whoami(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": event["requestContext"]["connectionId"]}


async def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"statusCode": 200, "body": event["body"]}
