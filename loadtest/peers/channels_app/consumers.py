"""The WebSocket consumer: checks the token, joins its tenant's group, answers actions."""

from __future__ import annotations

import os
from typing import Any

import orjson
from channels.generic.websocket import AsyncWebsocketConsumer

from loadtest.peers.contract import tenant_of

__all__ = ["LoadConsumer"]

_SECRET = os.environ.get("LT_JWT_SECRET", "")


class LoadConsumer(AsyncWebsocketConsumer):
    """One client: ``echo`` / ``whoami`` actions; ``push`` events from the views."""

    tenant: str | None = None

    async def connect(self) -> None:
        self.tenant = tenant_of("/?" + self.scope["query_string"].decode(), _SECRET)
        if self.tenant is None:
            await self.close()  # before accept: the handshake is refused (403)
            return
        await self.channel_layer.group_add(self.tenant, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.tenant is not None:
            await self.channel_layer.group_discard(self.tenant, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            action = orjson.loads(text_data or bytes_data or b"{}").get("action")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if action == "echo":
            await self.send(text_data=text_data)
        elif action == "whoami":
            await self.send(text_data=f'{{"id":"{self.channel_name}"}}')

    async def push(self, event: dict[str, Any]) -> None:
        """A message from the management views (``type: push``)."""
        await self.send(text_data=event["text"])
