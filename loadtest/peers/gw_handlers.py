"""wsgateway route handlers for load runs (``[routes]`` in the config the runner writes).

Async, as the gateway runs async handlers without a thread hop; each does the least a real
handler would: ``$connect`` accepts, ``echo`` answers with the frame, ``whoami`` tells the
client its connection id (so it can be posted to through the management API).
"""

from __future__ import annotations

from typing import Any

__all__ = ["connect", "echo", "whoami"]

_OK = {"statusCode": 200}


async def connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """``$connect``: accept (the gateway has verified the JWT already)."""
    return _OK


async def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """``echo``: send the frame back to its sender."""
    return {"statusCode": 200, "body": event["body"]}


async def whoami(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """``whoami``: answer ``{"id": "<connection id>"}``."""
    return {"statusCode": 200, "body": f'{{"id":"{event["requestContext"]["connectionId"]}"}}'}
