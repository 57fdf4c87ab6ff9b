"""A handler written exactly as for AWS Lambda: it posts back through the
``apigatewaymanagementapi`` client, with no wsgateway import.

On AWS the endpoint is ``https://{domainName}/{stage}``; under wsgateway the management API
is another port, so the endpoint comes from the environment: ``WSGATEWAY_MANAGEMENT_URL``
(set by the gateway for its handlers, e.g. ``http://127.0.0.1:8081/prod``) or your own
``APIGW_ENDPOINT``. Credentials and region come from the usual AWS environment variables.

Route: ``"sendmessage" = "handlers.aws_lambda:handler"`` from a clone, or the installed copy,
``"wsgateway.examples.aws_lambda:handler"`` (it needs the ``aws`` extra for aioboto3); the
client sends ``{"action": "sendmessage", "data": "..."}`` and gets ``{"echo": data}`` back
through PostToConnection.
"""

import json
import os
from typing import Any

import aioboto3  # type: ignore[import-untyped]


def _endpoint(event: dict[str, Any]) -> str:
    url = os.environ.get("APIGW_ENDPOINT") or os.environ.get("WSGATEWAY_MANAGEMENT_URL")
    if url:
        return url
    ctx = event["requestContext"]
    return f"https://{ctx['domainName']}/{ctx['stage']}"


async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Post the message's ``data`` back to its sender; 410 if the sender is already gone."""
    connection_id = event["requestContext"]["connectionId"]
    try:
        data = json.loads(event.get("body") or "{}").get("data", "")
    except ValueError:
        return {"statusCode": 400, "body": "body must be JSON"}
    session = aioboto3.Session()
    async with session.client(
        "apigatewaymanagementapi",
        endpoint_url=_endpoint(event),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    ) as client:
        try:
            await client.post_to_connection(ConnectionId=connection_id, Data=json.dumps({"echo": data}).encode())
        except client.exceptions.GoneException:
            return {"statusCode": 410}
    return {"statusCode": 200}
