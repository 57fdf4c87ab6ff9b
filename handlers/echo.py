"""The simplest two-way route: send every message back to its sender.

Route it as ``"$default" = "handlers.echo:handler"`` from a clone, or name the installed copy,
``"wsgateway.examples.echo:handler"``, as the embedded defaults do. The handler is
async, so it runs on the gateway's event loop with no thread hop; a sync ``def`` works too
(it then runs in the handler thread pool).
"""

from typing import Any


async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Return the frame as it came; binary frames go back as binary."""
    return {
        "statusCode": 200,
        "body": event.get("body", ""),
        "isBase64Encoded": event.get("isBase64Encoded", False),
    }
