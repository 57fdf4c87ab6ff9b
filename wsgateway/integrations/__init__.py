"""How a route runs. Three kinds of target, told apart by the form of the route's value:

- ``module:function``: a Python function, sync or async (:class:`PythonIntegration`);
- ``http://...`` or ``https://...``: the event POSTed to a backend (:class:`HttpIntegration`);
- ``lambda:NAME[:QUALIFIER]`` or ``lambda:arn:aws:lambda:...``: an AWS Lambda function.

Every integration takes the AWS Lambda-proxy event and a :class:`HandlerContext` and returns
a Lambda result (what the function returned, or what the backend answered, read the same
way); it raises :class:`HandlerTimeout` past the route's time limit and lets failures
through (the gateway logs them and answers the client with AWS's ``Internal server error``
frame). Integrations holding connections open them in ``start()`` and release them in
``close()``; the gateway calls both.

The HTTP integration's module (and aiohttp with it) is imported only when a route needs it:
most nodes have none, and aiohttp is a large share of a node's start-up.
"""

from __future__ import annotations

from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from ..config import IntegrationsConfig, LimitsConfig
from ..errors import HandlerTimeout
from .context import HandlerContext
from .lambda_ import LambdaClients, LambdaIntegration, load_lambda
from .python import PythonIntegration

if TYPE_CHECKING:
    from .http import HttpIntegration, HttpPool

__all__ = ["HandlerContext", "HandlerTimeout", "HttpIntegration", "HttpPool", "Integration", "LambdaClients",
           "LambdaIntegration", "PythonIntegration", "load_integration", "target_kind"]

_DEFAULT_MAX_BODY = LimitsConfig().max_message_bytes


def __getattr__(name: str) -> Any:
    """``HttpIntegration`` and ``HttpPool``, imported when first asked for (see above)."""
    if name in ("HttpIntegration", "HttpPool"):
        from . import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Integration(Protocol):
    target: str
    kind: str  # "python", "http" or "lambda": the metric label and the access log's "integration"

    async def start(self) -> None:
        """Open what the integration needs (a connection pool); called once at gateway start."""

    async def close(self) -> None:
        """Release it; called at gateway stop, after every route has run. Idempotent."""

    async def invoke(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Run the route's function; raise HandlerTimeout or the function's exception."""

    def call(self, event: dict[str, Any], context: HandlerContext) -> Awaitable[Any]:
        """Run it with no time limit: the caller enforces one (see Dispatcher) by awaiting
        what this returns (a coroutine, or for a sync Python function the thread pool's future)."""


def target_kind(target: str) -> str:
    """The kind of a route target by its form: "http", "lambda" or "python"."""
    if target.startswith(("http://", "https://")):
        return "http"
    if target.startswith("lambda:"):
        return "lambda"
    return "python"


def load_integration(
    target: str,
    *,
    key: str,
    timeout: float,
    executor: Executor,
    route_key: str = "$default",
    settings: IntegrationsConfig | None = None,
    pool: HttpPool | None = None,
    max_body: int = _DEFAULT_MAX_BODY,
    lambdas: LambdaClients | None = None,
) -> Integration:
    """Resolve a route target at start-up; raise ConfigError naming ``key`` if it cannot.

    ``route_key`` is the route it serves (``$connect`` and ``$disconnect`` read answers
    differently); ``settings`` is ``[integrations]``; HTTP targets share ``pool`` (one per
    node; a new one if None) and read answers up to ``max_body`` bytes; ``lambda:`` targets
    share ``lambdas``, the node's client owner (see :func:`load_lambda` without one)."""
    settings = settings or IntegrationsConfig()
    kind = target_kind(target)
    if kind == "http":
        from .http import HttpIntegration, HttpPool

        pool = pool or HttpPool(settings.http)
        return HttpIntegration(target, pool=pool, timeout=timeout, max_body=max_body, route_key=route_key)
    if kind == "lambda":
        return load_lambda(target, key=key, timeout=timeout, settings=settings.lambda_, clients=lambdas)
    return PythonIntegration.load(target, key=key, timeout=timeout, executor=executor)

