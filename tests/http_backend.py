"""A real HTTP backend on 127.0.0.1 for the HTTP-integration tests: an aiohttp app that
checks every request (method, headers, signature), records it, and answers as the event asks.

The answer is chosen by the event: on ``$connect`` by the ``connect`` query parameter, on a
message by its body's ``"do"`` member; ``$disconnect`` fails ``disconnect_failures`` times
with 503 first (or hangs, with ``disconnect_hangs``). Nothing here is a stand-in for gateway code: it is the user's side of the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from wsgateway.integrations.signature import HEADER, verify

SECRET = "backend-signing-secret-0123456789"


@dataclass
class Seen:
    """One request the backend received."""

    path: str
    headers: dict[str, str]
    event: dict[str, Any]
    signed: bool


@dataclass
class Backend:
    secret: str | None = SECRET
    port: int = 0
    disconnect_failures: int = 0
    disconnect_hangs: bool = False
    max_message_bytes: int = 131072
    seen: list[Seen] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)  # connection id -> requests now
    overlapped: int = 0  # requests that arrived while their connection had one in flight

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, route_key: str) -> list[Seen]:
        return [s for s in self.seen if s.headers.get("X-Wsgateway-Route-Key") == route_key]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        signed = self.secret is not None and verify(
            self.secret.encode(), request.headers.get(HEADER, ""), body, time.time())
        if self.secret is not None and not signed:
            return web.Response(status=401)  # a backend refuses what it cannot verify
        assert request.method == "POST" and request.content_type == "application/json"
        event = json.loads(body)
        seen = Seen(request.path, dict(request.headers), event, signed)
        self.seen.append(seen)
        cid = request.headers["X-Wsgateway-Connection-Id"]
        if self.in_flight.get(cid):
            self.overlapped += 1
        self.in_flight[cid] = self.in_flight.get(cid, 0) + 1
        try:
            return await self._answer(event)
        finally:
            self.in_flight[cid] -= 1

    async def _answer(self, event: dict[str, Any]) -> web.StreamResponse:
        route = event["requestContext"]["routeKey"]
        if route == "$connect":
            ask = (event.get("queryStringParameters") or {}).get("connect", "")
        elif route == "$disconnect":
            if self.disconnect_hangs:
                return await _hang(self, event)
            if len(self.of("$disconnect")) <= self.disconnect_failures:
                return web.Response(status=503)
            return web.Response(status=200)
        else:
            ask = json.loads(event["body"]).get("do", "") if event["body"].startswith("{") else ""
        return await _ANSWERS.get(ask, _lambda_echo)(self, event)


async def _lambda_echo(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    if event["requestContext"]["routeKey"] == "$connect":
        return web.json_response({"statusCode": 200})
    return web.json_response({"statusCode": 200, "body": "echo:" + event["body"]})


async def _plain(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.Response(text="plain reply", content_type="text/plain")


async def _binary(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.Response(body=b"\x00\xff\xfe", content_type="application/octet-stream")


async def _empty(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.Response(status=204)


async def _hang(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(60)
    return web.Response(status=200)


async def _big(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.Response(body=b"x" * (backend.max_message_bytes + 1), content_type="text/plain")


async def _bad_json(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.Response(text='{"statusCode": 200, "body": ', content_type="application/json")


async def _slowly(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    await asyncio.sleep(0.005)
    return web.Response(text=json.loads(event["body"])["n"], content_type="text/plain")


def _status(status: int, **headers: str) -> Any:
    async def answer(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=status, text="backend detail at " + backend.url("/"), headers=headers)
    return answer


async def _lambda_reject(backend: Backend, event: dict[str, Any]) -> web.StreamResponse:
    return web.json_response({"statusCode": 401})


_ANSWERS = {
    "plain": _plain, "binary": _binary, "empty": _empty, "hang": _hang, "big": _big, "badjson": _bad_json,
    "slowly": _slowly, "lambda401": _lambda_reject,
    "403": _status(403), "404": _status(404), "500": _status(500), "502": _status(502),
    "redirect": _status(302, Location="http://127.0.0.1:1/elsewhere"),
}


@contextlib.asynccontextmanager
async def running_backend(**options: Any) -> AsyncIterator[Backend]:
    """Serve a :class:`Backend` on 127.0.0.1 (``port`` 0: a free one) until the block ends."""
    backend = Backend(**options)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", backend.port)
    await site.start()
    backend.port = runner.addresses[0][1]
    try:
        yield backend
    finally:
        await runner.cleanup()
