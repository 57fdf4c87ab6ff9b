"""A local endpoint speaking AWS Lambda's Invoke API, for tests of ``lambda:`` routes.

It serves what ``sam local start-lambda`` serves, ``POST /2015-03-31/functions/{name}/
invocations``, on 127.0.0.1 and a free port; checks every request's SigV4 signature (service
``lambda``) with :class:`wsgateway.sigv4.SigV4Verifier`, never trusting the request; and runs
real Python functions ``(event, context)`` with a Lambda-like context. Answers as Lambda does:

- the function's return value as the JSON payload, 200 (``bytes`` go out as they are, for
  tests of payloads that are not JSON);
- a function that raised: 200, ``X-Amz-Function-Error: Unhandled``, an error payload;
- a bad signature: 403 ``InvalidSignatureException``; an unknown function: 404
  ``ResourceNotFoundException``; a throttled function: 429 ``TooManyRequestsException``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from wsgateway.errors import SignatureError
from wsgateway.sigv4 import SigV4Verifier

__all__ = ["Invocation", "LambdaEndpoint"]

_FUNCTION_TIMEOUT_S = 30.0  # what the context reports as the function's own limit


@dataclass(frozen=True)
class Invocation:
    """One request the endpoint accepted: the function's name, qualifier and event."""

    name: str
    qualifier: str
    event: Any


class _Context:
    """What AWS's Python runtime passes as ``context`` (the attributes handlers read)."""

    def __init__(self, name: str, qualifier: str, request_id: str) -> None:
        self.function_name = name
        self.function_version = qualifier or "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"
        self.memory_limit_in_mb = "128"
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "local"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + _FUNCTION_TIMEOUT_S

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LambdaEndpoint:
    """``async with LambdaEndpoint(functions, credentials) as lam:`` then point the gateway's
    ``[integrations.lambda] endpoint_url`` at ``lam.url``. ``functions`` maps a function name
    to its callable; names in ``throttled`` answer 429. ``invocations`` records accepted calls
    and ``refused`` counts requests whose signature did not verify."""

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any]],
        credentials: Mapping[str, str],
        *,
        region: str,
        throttled: Iterable[str] = (),
    ) -> None:
        self.functions = dict(functions)
        self.throttled = set(throttled)
        self.invocations: list[Invocation] = []
        self.refused = 0
        self._verifier = SigV4Verifier(credentials, service="lambda", region=region)
        self._runner: web.AppRunner | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self.url = ""

    async def __aenter__(self) -> LambdaEndpoint:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Functions the gateway gave up on (past its time limit) would keep the server's
        # shutdown waiting for them: Lambda would run them out; a test stops them.
        for task in self._running:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def calls_of(self, name: str) -> list[Invocation]:
        return [call for call in self.invocations if call.name == name]

    async def _invoke(self, request: web.Request) -> web.Response:
        body = await request.read()
        raw_path, _, raw_query = request.raw_path.partition("?")
        try:
            self._verifier.verify(request.method, raw_path, raw_query, request.headers, body)
        except SignatureError as exc:
            self.refused += 1
            return _error(403, "InvalidSignatureException", str(exc))
        if request.headers.get("X-Amz-Invocation-Type", "RequestResponse") != "RequestResponse":
            return _error(400, "InvalidParameterValueException", "only RequestResponse is served here")
        name = _function_name(request.match_info["name"])
        qualifier = request.query.get("Qualifier", "")
        function = self.functions.get(name)
        if function is None:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        if name in self.throttled:
            return _error(429, "TooManyRequestsException", "Rate Exceeded.")
        event = orjson.loads(body) if body else {}
        self.invocations.append(Invocation(name, qualifier, event))
        context = _Context(name, qualifier, request.headers.get("X-Amz-Request-Id", "local"))
        headers = {"X-Amz-Executed-Version": qualifier or "$LATEST"}
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(event, context)
            else:
                result = await asyncio.to_thread(function, event, context)
        except Exception as exc:  # noqa: BLE001 - Lambda reports any exception as an Unhandled error
            error = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
            headers["X-Amz-Function-Error"] = "Unhandled"
            return web.Response(status=200, body=orjson.dumps(error), headers=headers, content_type="application/json")
        finally:
            self._running.discard(task)
        payload = result if isinstance(result, bytes) else orjson.dumps(result)
        return web.Response(status=200, body=payload, headers=headers, content_type="application/json")


def _function_name(value: str) -> str:
    """``NAME`` from a name or an ARN (``arn:aws:lambda:R:A:function:NAME[:Q]``)."""
    if value.startswith("arn:"):
        return value.split(":")[6]
    return value.split(":")[0]


def _error(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"message": message, "Type": "User"}),
                        headers={"x-amzn-ErrorType": error_type}, content_type="application/json")
