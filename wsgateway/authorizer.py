"""Custom authorizers, as AWS Lambda REQUEST authorizers on ``$connect``.

With ``auth.type = "authorizer"`` a ``module:function`` (sync or async, Lambda's
``(event, context)`` signature) decides each handshake. :class:`Authorizer` builds AWS's
REQUEST authorizer event (plus ``authorizationToken``: the first identity source's value, so
that TOKEN-style authorizers written for REST APIs run unchanged), calls the function through
the Python integration (sync ones in the gateway's thread pool, async ones on the loop, both
under ``limits.handler_timeout_s``) and evaluates the returned IAM policy against the
``methodArn`` as API Gateway does:

- a missing or empty identity source: 401, and the function is not called;
- an exception whose message is exactly ``Unauthorized``: 401;
- a ``Deny`` statement for ``execute-api:Invoke`` matching the ARN, or no matching ``Allow``:
  403 (Deny wins, as in IAM; ``*`` and ``?`` wildcards in Action and Resource);
- any other exception, a timeout, or a result that is not a policy (no string
  ``principalId``, a malformed statement, a ``context`` value that is not a string, number or
  boolean, more than 8 KB): 500, with the reason in the log only.

Policy outcomes (Allow and Deny, never errors) are cached for ``auth.cache_ttl_s`` keyed by
the identity sources' values, at most :data:`CACHE_ENTRIES` of them (least recently used
first out). The tenant is picked out of the allowed context by :mod:`wsgateway.auth`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from .errors import AuthError, HandlerTimeout
from .events import authorizer_event
from .ids import new_request_id
from .integrations import HandlerContext, PythonIntegration
from .integrations.context import GatewayCalls

if TYPE_CHECKING:
    from .config import GatewayConfig

__all__ = ["CACHE_ENTRIES", "Allowed", "Authorizer", "HandshakeRequest", "evaluate_policy",
           "load_authorizer", "method_arn"]

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000  # distinct identity values cached at once; bounds memory, not correctness
_MAX_RESULT_BYTES = 8192  # AWS's authorizer result size limit
_ACTION = "execute-api:Invoke"


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What the authorizer event is built from: one upgrade request, its connection id chosen."""

    connection_id: str
    headers: Sequence[tuple[str, str]]  # in order, original case, repeats kept
    query: Sequence[tuple[str, str]]  # in order, repeats kept
    source_ip: str
    user_agent: str
    host: str  # the Host header; auth's domain_name wins when configured


@dataclass(frozen=True, slots=True)
class Allowed:
    """An Allow outcome: the returned ``principalId`` and flat ``context``."""

    principal_id: str
    context: Mapping[str, str | int | float | bool]


@dataclass(frozen=True, slots=True)
class _Denied:
    reason: str  # fixed text for the log; a fresh AuthError is raised per hit


def method_arn(region: str, account_id: str, api_id: str, stage: str) -> str:
    """``arn:aws:execute-api:{region}:{account}:{apiId}/{stage}/$connect``: what policies match."""
    return f"arn:aws:execute-api:{region}:{account_id}:{api_id}/{stage}/$connect"


def load_authorizer(
    config: GatewayConfig, *, executor: Executor, calls: GatewayCalls, clock: Callable[[], float] = time.monotonic
) -> Authorizer | None:
    """The configured authorizer, imported now (start-up), or None unless type = "authorizer".

    Raises ConfigError naming ``auth.authorizer`` if the target cannot be imported.
    """
    auth = config.auth
    if auth.type != "authorizer" or auth.authorizer is None:
        return None
    integration = PythonIntegration.load(
        auth.authorizer, key="auth.authorizer", timeout=config.limits.handler_timeout_s, executor=executor
    )
    return Authorizer(
        integration,
        calls,
        arn=method_arn(auth.region, auth.account_id, config.api_id, config.stage),
        stage=config.stage,
        api_id=config.api_id,
        domain_name=config.domain_name,
        identity_sources=auth.identity_sources,
        cache_ttl_s=auth.cache_ttl_s,
        clock=clock,
    )


class Authorizer:
    """Calls one authorizer function per handshake (or answers from its cache)."""

    def __init__(
        self,
        integration: PythonIntegration,
        calls: GatewayCalls,
        *,
        arn: str,
        stage: str,
        api_id: str,
        domain_name: str,
        identity_sources: Sequence[str],
        cache_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._integration = integration
        self._calls = calls
        self.method_arn = arn
        self._stage = stage
        self._api_id = api_id
        self._domain_name = domain_name
        self._sources = tuple(_parse_source(source) for source in identity_sources)
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: OrderedDict[tuple[str, ...], tuple[float, Allowed | _Denied]] = OrderedDict()

    async def authorize(self, request: HandshakeRequest) -> Allowed:
        """Decide one handshake; return the Allow outcome or raise :class:`AuthError`
        (401, 403 or 500, see the module docstring)."""
        values = self._identity(request)
        outcome = self._cached(values)
        if outcome is None:
            outcome = await self._invoke(request, values)
            if self._ttl:
                self._remember(values, outcome)
        if isinstance(outcome, _Denied):
            raise AuthError(403, outcome.reason)
        return outcome

    def _identity(self, request: HandshakeRequest) -> tuple[str, ...]:
        values = []
        for kind, name in self._sources:
            value = _last(request.headers, name.lower(), fold=True) if kind == "header" else _last(request.query, name)
            if not value:  # AWS: missing, null or empty -> 401 without invoking the function
                raise AuthError(401, f"identity source {kind} {name!r} is missing or empty")
            values.append(value)
        return tuple(values)

    def _cached(self, values: tuple[str, ...]) -> Allowed | _Denied | None:
        entry = self._cache.get(values)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[values]
            return None
        self._cache.move_to_end(values)
        return entry[1]

    def _remember(self, values: tuple[str, ...], outcome: Allowed | _Denied) -> None:
        self._cache[values] = (self._clock() + self._ttl, outcome)
        self._cache.move_to_end(values)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _invoke(self, request: HandshakeRequest, values: tuple[str, ...]) -> Allowed | _Denied:
        request_id = new_request_id()
        event = authorizer_event(
            method_arn=self.method_arn, token=values[0] if values else "",
            connection_id=request.connection_id, stage=self._stage, api_id=self._api_id,
            domain_name=self._domain_name or request.host, source_ip=request.source_ip,
            user_agent=request.user_agent, headers=request.headers, query=request.query,
            request_id=request_id, epoch_s=time.time(),
        )
        integration = self._integration
        context = HandlerContext(
            self._calls, asyncio.get_running_loop(), request_id=request_id, function_name=integration.target,
            connection_id=request.connection_id, timeout=integration.timeout,
        )
        try:
            result = await integration.invoke(event, context)
        except HandlerTimeout:
            raise AuthError(500, f"authorizer timed out: connectionId={request.connection_id}") from None
        except Exception as exc:
            if str(exc) == "Unauthorized":  # AWS's one way for an authorizer to say 401
                raise AuthError(401, "authorizer answered Unauthorized") from None
            logger.error("authorizer %s failed: connectionId=%s requestId=%s", integration.target,
                         request.connection_id, request_id, exc_info=True)
            raise AuthError(500, f"authorizer raised {type(exc).__name__}") from None
        try:
            return evaluate_policy(result, self.method_arn)
        except AuthError as exc:
            if exc.status == 403:
                return _Denied(exc.reason)
            raise


# ---------------------------------------------------------------- policy evaluation

def evaluate_policy(result: Any, arn: str) -> Allowed:
    """Evaluate an authorizer's result for ``arn`` as API Gateway does.

    Returns :class:`Allowed`; raises :class:`AuthError` 403 when a matching statement denies
    ``execute-api:Invoke`` or none allows it, 500 when ``result`` is not a well-formed policy.
    """
    if not isinstance(result, Mapping):
        raise _malformed(f"the result is a {type(result).__name__}, not an object")
    principal_id = result.get("principalId")
    if not isinstance(principal_id, str):
        raise _malformed("principalId is missing or not a string")
    document = result.get("policyDocument")
    if not isinstance(document, Mapping):
        raise _malformed("policyDocument is missing or not an object")
    raw = document.get("Statement")
    statements = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(statements, list) or not statements:
        raise _malformed("policyDocument.Statement is missing or empty")
    effects = {_effect(statement, arn) for statement in statements}
    if "Deny" in effects:
        raise AuthError(403, "the policy denies execute-api:Invoke on the methodArn")
    if "Allow" not in effects:
        raise AuthError(403, "no policy statement allows execute-api:Invoke on the methodArn")
    context = _flat_context(result.get("context"))
    _check_size(result)
    return Allowed(principal_id, context)


def _effect(statement: Any, arn: str) -> str | None:
    """``"Allow"`` or ``"Deny"`` if ``statement`` covers Invoke on ``arn``, else None."""
    if not isinstance(statement, Mapping):
        raise _malformed("a Statement is not an object")
    effect = statement.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _malformed("a Statement's Effect is not Allow or Deny")
    actions = _strings(statement.get("Action"), "Action")
    resources = _strings(statement.get("Resource"), "Resource")
    # IAM compares actions case-insensitively and resources (ARNs) exactly.
    if any(_glob(pattern.lower()).fullmatch(_ACTION.lower()) for pattern in actions) and any(
        _glob(pattern).fullmatch(arn) for pattern in resources
    ):
        return str(effect)
    return None


def _strings(value: Any, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise _malformed(f"a Statement's {name} is not a string or a list of strings")
    return items


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """IAM wildcards: ``*`` any run of characters (``/`` included), ``?`` any one character."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _flat_context(context: Any) -> Mapping[str, str | int | float | bool]:
    """AWS accepts only string, number and boolean context values (an object or array: 500)."""
    if context is None:
        return MappingProxyType({})
    if not isinstance(context, Mapping):
        raise _malformed("context is not an object")
    for key, value in context.items():
        if not isinstance(key, str):
            raise _malformed("a context key is not a string")
        if not isinstance(value, str | int | float | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise _malformed(f"context value {key!r} is not a string, number or boolean")
    return MappingProxyType(dict(context))


def _check_size(result: Mapping[str, Any]) -> None:
    try:
        size = len(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:
        raise _malformed("the result is not JSON") from None
    if size > _MAX_RESULT_BYTES:
        raise _malformed(f"the result is {size} bytes, over AWS's {_MAX_RESULT_BYTES}")


def _malformed(what: str) -> AuthError:
    return AuthError(500, f"malformed authorizer result: {what}")


# ---------------------------------------------------------------- identity sources

def _parse_source(source: str) -> tuple[str, str]:
    """``route.request.header.NAME`` -> ("header", NAME); AuthConfig's rule checked the form."""
    kind, _, name = source.removeprefix("route.request.").partition(".")
    return ("header" if kind == "header" else "querystring", name)


def _last(pairs: Sequence[tuple[str, str]], name: str, *, fold: bool = False) -> str | None:
    """The last value of ``name`` in ``pairs`` (the one AWS's single-value map keeps)."""
    found = None
    for key, value in pairs:
        if (key.lower() if fold else key) == name:
            found = value
    return found
