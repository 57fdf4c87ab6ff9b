"""How a route runs: a Python function (``module:function``), sync or async, or an AWS
Lambda function (``lambda:NAME[:QUALIFIER]`` or ``lambda:arn:aws:lambda:...``).

Every integration takes the AWS Lambda-proxy event and a :class:`HandlerContext` and returns
what the function returned; it raises :class:`HandlerTimeout` past the route's time limit and
lets the function's own exceptions through (the gateway logs them and answers the client
with AWS's ``Internal server error`` frame).
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Protocol

from ..config import LambdaIntegrationConfig
from ..errors import HandlerTimeout
from .context import HandlerContext
from .lambda_ import LambdaClients, LambdaIntegration, load_lambda
from .python import PythonIntegration

__all__ = ["HandlerContext", "HandlerTimeout", "Integration", "LambdaClients", "LambdaIntegration",
           "PythonIntegration", "load_integration"]


class Integration(Protocol):
    target: str

    async def invoke(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Run the route's function; raise HandlerTimeout or the function's exception."""

    async def call(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Run it with no time limit: the caller enforces one (see Dispatcher)."""


def load_integration(
    target: str,
    *,
    key: str,
    timeout: float,
    executor: Executor,
    lambda_settings: LambdaIntegrationConfig | None = None,
    lambdas: LambdaClients | None = None,
) -> Integration:
    """Resolve a route target at start-up; raise ConfigError naming ``key`` if it cannot.

    ``lambda:`` targets read ``lambda_settings`` (``[integrations.lambda]``) and share
    ``lambdas``, the node's client owner (see :func:`load_lambda` without one)."""
    if target.startswith("lambda:"):
        settings = lambda_settings or LambdaIntegrationConfig()
        return load_lambda(target, key=key, timeout=timeout, settings=settings, clients=lambdas)
    return PythonIntegration.load(target, key=key, timeout=timeout, executor=executor)
