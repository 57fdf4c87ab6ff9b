"""Lambda integrations: a route whose target is ``lambda:NAME[:QUALIFIER]`` or
``lambda:arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]``.

The gateway calls Lambda's ``Invoke`` (``RequestResponse``) with the same Lambda-proxy event a
Python handler gets as the ``Payload``, through aioboto3's ``lambda`` client: credentials from
the standard AWS chain, ``[integrations.lambda] endpoint_url`` when set (``sam local
start-lambda``, LocalStack). The function's payload is read exactly like a Python handler's
return value. A ``FunctionError``, a throttle, a refused or failed call and a payload that is
not JSON raise :class:`~wsgateway.errors.IntegrationError`; past the route's time limit the
call is abandoned (:class:`~wsgateway.errors.HandlerTimeout`).

One client per region serves every Lambda route of a node (:class:`LambdaClients`): opened by
:meth:`LambdaClients.start`, closed by :meth:`LambdaClients.close`. aioboto3 is the ``aws``
extra; it is imported only when a node has a Lambda route.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError, IntegrationError
from .context import HandlerContext
from .timed import within

if TYPE_CHECKING:
    from ..config import LambdaIntegrationConfig

__all__ = ["LambdaClients", "LambdaIntegration", "LambdaTarget", "load_lambda", "parse_target"]

_NAME = r"(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?"
_ARN = re.compile(rf"(?P<function>arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):\d{{12}}:function:{_NAME})")
_PLAIN = re.compile(_NAME)
_CONNECT_TIMEOUT_S = 5.0  # a Lambda endpoint that takes longer to accept a connection is down
_THROTTLES = frozenset({"TooManyRequestsException", "ThrottlingException", "EC2ThrottledException"})
_ERROR_TEXT = 500  # characters of a function's error payload kept for the log


class LambdaTarget:
    """A parsed Lambda target: what ``Invoke`` is called with, and the region it lives in."""

    __slots__ = ("function", "qualifier", "region")

    def __init__(self, function: str, qualifier: str, region: str) -> None:
        self.function = function  # a name, or an ARN without its qualifier
        self.qualifier = qualifier  # "" = $LATEST (or what the ARN's alias says)
        self.region = region  # "" = the default of [integrations.lambda]


def parse_target(target: str, key: str) -> LambdaTarget:
    """Split ``lambda:...`` into function, qualifier and the ARN's region ("" for a name);
    raise ConfigError naming ``key`` for any other form."""
    prefix, _, rest = target.partition(":")
    arn = _ARN.fullmatch(rest) if prefix == "lambda" else None
    if arn is not None:
        function = arn["function"].removesuffix(f":{arn['qualifier']}") if arn["qualifier"] else arn["function"]
        return LambdaTarget(function, arn["qualifier"] or "", arn["region"])
    plain = _PLAIN.fullmatch(rest) if prefix == "lambda" else None
    if plain is None:
        raise ConfigError(key, "a lambda target looks like 'lambda:NAME[:QUALIFIER]' or "
                               f"'lambda:arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]', got {target!r}")
    return LambdaTarget(plain["name"], plain["qualifier"] or "", "")


class LambdaClients:
    """One node's aioboto3 ``lambda`` clients, one per region its routes name, shared by every
    Lambda route. Build it at start-up (no I/O), :meth:`add` each route's region while loading
    routes, :meth:`start` on the gateway's loop, :meth:`close` when the gateway stops (both
    idempotent). ``timeout`` is ``limits.handler_timeout_s``: it bounds connect and read."""

    __slots__ = ("region", "endpoint_url", "timeout", "errors", "_regions", "_clients", "_stack", "_closed")

    def __init__(self, *, region: str = "", endpoint_url: str = "", timeout: float) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self.errors: Any = None  # botocore.exceptions, imported by start() with the clients
        self._regions: set[str] = set()
        self._clients: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    def add(self, region: str) -> None:
        """A route will call functions in ``region``: :meth:`start` opens a client for it."""
        self._regions.add(region)

    async def start(self) -> None:
        """Open one client per region added; later calls do nothing. Raises ModuleNotFoundError
        without the ``aws`` extra (the loader checked it already)."""
        if self._closed or not self._regions or self._clients:
            return
        aioboto3 = importlib.import_module("aioboto3")
        self.errors = importlib.import_module("botocore.exceptions")
        botocore_config = importlib.import_module("botocore.config")
        config = botocore_config.Config(
            connect_timeout=min(_CONNECT_TIMEOUT_S, self.timeout),
            # a little past the route's limit, so that the gateway's own timeout speaks first
            read_timeout=self.timeout + 1.0,
            # One attempt: a retried Invoke may run a function twice, and the route's time limit
            # leaves no room for botocore's backoff anyway.
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        session = aioboto3.Session()
        for region in sorted(self._regions):
            client = session.client(
                "lambda", region_name=region, endpoint_url=self.endpoint_url or None, config=config
            )
            self._clients[region] = await self._stack.enter_async_context(client)

    async def close(self) -> None:
        """Close every client; idempotent. Calls after it raise IntegrationError."""
        self._closed = True
        self._clients.clear()
        await self._stack.aclose()

    def client(self, region: str) -> Any:
        """The open client for ``region``; raise IntegrationError before start or after close."""
        client = self._clients.get(region)
        if client is None:
            raise IntegrationError("lambda", "closed", "Lambda client used before start or after stop")
        return client


class LambdaIntegration:
    """A resolved ``lambda:`` target, calling its function through a shared client owner."""

    __slots__ = ("target", "function", "qualifier", "region", "timeout", "_clients")

    kind = "lambda"

    def __init__(self, target: str, parsed: LambdaTarget, *, clients: LambdaClients, timeout: float) -> None:
        self.target = target
        self.function = parsed.function
        self.qualifier = parsed.qualifier
        self.region = parsed.region or clients.region
        self.timeout = timeout
        self._clients = clients

    @classmethod
    def load(cls, target: str, *, key: str, timeout: float, clients: LambdaClients) -> LambdaIntegration:
        """Check the target at start-up: its form, a region, aioboto3 installed. Raises
        ConfigError naming ``key``, in one line, for each."""
        parsed = parse_target(target, key)
        region = parsed.region or clients.region
        if not region:
            raise ConfigError(key, "a lambda target needs a region: give the function's full ARN "
                                   "or set [integrations.lambda] region")
        try:
            importlib.import_module("aioboto3")
        except ImportError:
            raise ConfigError(key, "lambda targets need aioboto3: pip install 'wsgateway[aws]'") from None
        clients.add(region)
        return cls(target, parsed, clients=clients, timeout=timeout)

    async def start(self) -> None:
        """Open the node's clients (idempotent: every Lambda route shares them)."""
        await self._clients.start()

    async def close(self) -> None:
        """Close the node's clients, once every route has run; idempotent."""
        await self._clients.close()

    async def invoke(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Call the function; raise HandlerTimeout past the limit, or IntegrationError."""
        return await within(self.timeout, self.target, self.call(event, context))

    async def call(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Invoke the function with no time limit of its own (the caller enforces one) and
        return its payload, decoded: a Lambda result as a Python handler returns it."""
        client = self._clients.client(self.region)
        args: dict[str, Any] = {
            "FunctionName": self.function, "InvocationType": "RequestResponse", "Payload": orjson.dumps(event),
        }
        if self.qualifier:
            args["Qualifier"] = self.qualifier
        botocore_exceptions = self._clients.errors
        try:
            response = await client.invoke(**args)
            payload: bytes = await response["Payload"].read()
        except botocore_exceptions.ClientError as exc:
            raise _refusal(self.target, exc.response) from None
        except (botocore_exceptions.EndpointConnectionError, botocore_exceptions.ConnectTimeoutError) as exc:
            # never reached Lambda: the function did not run
            raise IntegrationError("lambda", "connect", f"{self.target}: Invoke failed: {exc}", retryable=True) from None
        except botocore_exceptions.BotoCoreError as exc:  # a dropped connection, a read timeout: it may have run
            raise IntegrationError("lambda", "transport", f"{self.target}: Invoke failed: {exc}") from None
        return self._result(response.get("FunctionError"), payload)

    def _result(self, function_error: str | None, payload: bytes) -> Any:
        if function_error:
            text = payload[:_ERROR_TEXT].decode(errors="replace")
            raise IntegrationError("lambda", "function_error", f"{self.target}: {function_error}: {text}")
        if not payload:
            return None
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise IntegrationError("lambda", "invalid_json", f"{self.target}: payload is not JSON") from None


def _refusal(target: str, response: Mapping[str, Any]) -> IntegrationError:
    """Lambda answered an error instead of a payload: a throttle (the function did not run,
    so trying again may work), else labelled by the HTTP status class."""
    code = str(response.get("Error", {}).get("Code", "")) or "Unknown"
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
    if code in _THROTTLES:
        return IntegrationError("lambda", "throttle", f"{target}: Invoke throttled: {code}", retryable=True)
    reason = "4xx" if 400 <= status < 500 else "5xx"
    return IntegrationError("lambda", reason, f"{target}: Invoke refused: {status} {code}", retryable=False)


def load_lambda(
    target: str, *, key: str, timeout: float, settings: LambdaIntegrationConfig, clients: LambdaClients | None = None
) -> LambdaIntegration:
    """Resolve a ``lambda:`` route at start-up (ConfigError naming ``key`` if it cannot).

    ``clients`` is the node's owner, shared by its Lambda routes; without one (a route loaded
    alone) the route gets its own, built from ``settings``."""
    if clients is None:
        clients = LambdaClients(region=settings.region, endpoint_url=settings.endpoint_url, timeout=timeout)
    return LambdaIntegration.load(target, key=key, timeout=timeout, clients=clients)
