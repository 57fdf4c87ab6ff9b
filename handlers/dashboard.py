"""A practice's call-status dashboard.

Browser dashboards of a medical practice connect with a JWT whose ``practice_id`` claim (the
``auth.tenant_claim``) names the practice, so the gateway tracks each connection under its
practice. When the phone system reports a call (ringing, answered, missed), the backend makes
ONE tenant fan-out call and every dashboard of that practice updates::

    POST /prod/@tenants/{practice_id}/messages      (SigV4-signed like any management call)
    {"type": "call", "status": "ringing", "from": "+44 20 7946 0000", "at": "..."}

:func:`publish_call_event` below is that backend call. The routes a dashboard uses:

- ``$connect``: refuse roles that may not see call data (403), accept the rest;
- ``$disconnect``: log who left (a real app would update presence);
- ``subscribe`` (``{"action": "subscribe"}``): answer with who you are, so the page can show
  its practice and connection id.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)

ALLOWED_ROLES = {"", "staff", "admin", "reception"}


async def on_connect(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Accept staff of the practice; refuse other roles with 403."""
    authorizer = event["requestContext"].get("authorizer", {})
    role = str(authorizer.get("role", ""))
    if role not in ALLOWED_ROLES:
        return {"statusCode": 403, "body": "role not allowed"}
    return {"statusCode": 200}


async def on_disconnect(event: dict[str, Any], context: Any) -> None:
    """Log who left; the return value of ``$disconnect`` is ignored, as on AWS."""
    ctx = event["requestContext"]
    log.info(
        "dashboard left: practice=%s connectionId=%s code=%s",
        ctx.get("authorizer", {}).get("tenant"),
        ctx["connectionId"],
        ctx.get("disconnectStatusCode"),
    )


async def subscribe(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer the sender with its connection id and practice."""
    ctx = event["requestContext"]
    practice = ctx.get("authorizer", {}).get("tenant")
    me = {"type": "subscribed", "connectionId": ctx["connectionId"], "practice": practice}
    return {"statusCode": 200, "body": json.dumps(me)}


async def publish_call_event(
    endpoint_url: str, practice_id: str, call: dict[str, Any], *, region: str = "us-east-1"
) -> int:
    """Backend side: push one call event to every dashboard of a practice; return how many.

    ``endpoint_url`` is the management API with its stage, e.g. ``http://127.0.0.1:8081/prod``.
    Credentials come from the usual AWS environment (AWS_ACCESS_KEY_ID, ...), as for boto3.
    """
    from urllib.parse import quote

    import aiohttp
    import botocore.session  # type: ignore[import-untyped]
    from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]

    url = f"{endpoint_url.rstrip('/')}/@tenants/{quote(practice_id, safe='')}/messages"
    body = json.dumps({"type": "call", **call}).encode()
    request = AWSRequest(method="POST", url=url, data=body)
    credentials = botocore.session.get_session().get_credentials()
    if credentials is not None:
        SigV4Auth(credentials, "execute-api", region).add_auth(request)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=dict(request.headers)) as response,
    ):
        response.raise_for_status()
        return int((await response.json())["delivered"])
