"""Handshake authentication: a token becomes a :class:`Principal`, or :class:`AuthError`.

This module knows nothing of sockets: the server hands :meth:`Authenticator.authenticate` the
upgrade request's headers, query parameters and offered subprotocols.

With ``auth.type = "jwt"`` the token comes from the first configured source that is present
(``header:NAME``, ``query:NAME``, or ``subprotocol:NAME`` where the client offers
``["NAME", "<token>"]``). Its signature is checked by PyJWT against keys chosen only by
configuration: the token's ``alg`` must be pinned in ``auth.algorithms``, and it picks the key
*family* (HS* -> the configured secret only; RS*/PS* -> RSA keys; ES* -> EC keys of the matching
curve; EdDSA -> OKP keys). ``jku``/``x5u``/``jwk``/``x5c`` headers are never looked at.

Asymmetric keys come from ``auth.public_key_file`` (parsed once at construction) or from
``auth.jwks_url``. JWKS keys are cached by (issuer, kid); an unknown kid triggers a refetch at
most once per ``jwks_min_refresh_s``, and concurrent handshakes share one in-flight fetch. A
token without ``kid`` uses the key set's only key that fits its ``alg``; a token whose kid is
unknown may use a kid-less key under the same "only key" rule.

Statuses: 401 for a missing or invalid token, 403 for a valid token without a usable tenant,
503 when the JWKS cannot be fetched and the kid is unknown. The reason is for the log; it never
contains the token.

With ``auth.type = "authorizer"`` a :class:`~wsgateway.authorizer.Authorizer` decides instead
(401, 403 or 500, see :mod:`wsgateway.authorizer`); the tenant is the allowed context's
``auth.tenant_key`` value: missing, empty or not a string or integer is a 500 (the authorizer
is broken), longer than :data:`MAX_TENANT_CHARS` a 403, as a JWT's.

The token checks themselves are in :mod:`wsgateway.tokens`, imported only with ``type = "jwt"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from .authorizer import Allowed, Authorizer, HandshakeRequest
from .errors import AuthError, ConfigError

if TYPE_CHECKING:
    from .config import AuthConfig
    from .tokens import TokenChecker

__all__ = ["MAX_TENANT_CHARS", "Authenticator", "Principal"]

logger = logging.getLogger(__name__)

# The longest tenant name, at the handshake and on the management API alike: a tenant that
# could connect but never be addressed would be unreachable by its backends.
MAX_TENANT_CHARS = 256
_MAX_TOKEN_CHARS = 8192  # longer than any sane JWT; bounds PyJWT's per-character parsing
_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who opened a connection; immutable for the connection's lifetime."""

    principal_id: str  # the token's "sub" ("" with auth off)
    tenant: str  # value of the tenant claim (a non-empty string)
    context: Mapping[str, Any]  # each configured context claim present in the token
    expires_at: float | None = None  # token exp (epoch s)

    def authorizer(self) -> dict[str, Any]:
        """A fresh ``requestContext.authorizer``: ``{"principalId", "tenant", **context}``.

        A context claim named ``principalId`` or ``tenant`` never overrides the identity.
        """
        result: dict[str, Any] = {"principalId": self.principal_id, "tenant": self.tenant}
        for name, value in self.context.items():
            result.setdefault(name, value)
        return result


class Authenticator:
    """Turns a handshake's credentials into a :class:`Principal`; one per gateway.

    Build it at start-up (it reads and parses keys, raising :class:`ConfigError` naming the
    key), ``await start()`` before the first handshake and ``await close()`` at shutdown.
    ``clock`` (epoch seconds) drives token expiry checks and the JWKS refetch interval.
    """

    def __init__(
        self, config: AuthConfig, *, clock: Callable[[], float] = time.time, authorizer: Authorizer | None = None
    ) -> None:
        if config.type == "authorizer" and authorizer is None:
            raise ConfigError("auth.authorizer", 'type = "authorizer" needs authorizer = "module:function"')
        self._authorizer = authorizer if config.type == "authorizer" else None
        self._tenant_key = config.tenant_key
        self._enabled = config.type == "jwt"
        self._sources = _parse_sources(config.sources)
        self._subprotocol_names = tuple(name for kind, name in self._sources if kind == "subprotocol")
        self._tenant_claim = config.tenant_claim
        self._context_claims = config.context_claims
        self._tokens: TokenChecker | None = None
        if self._enabled:
            from .tokens import TokenChecker  # PyJWT and cryptography: only a node that checks tokens

            self._tokens = TokenChecker(config, clock)

    async def start(self) -> None:
        """Open the JWKS client and prefetch the key set; a failed fetch is logged, not raised."""
        if not self._enabled and self._authorizer is None:
            logger.warning('auth.type = "none": every handshake is accepted without a token')
        elif self._tokens is not None:
            await self._tokens.start()

    async def close(self) -> None:
        """Stop any JWKS fetch and close the HTTP client; idempotent."""
        if self._tokens is not None:
            await self._tokens.close()

    def token_subprotocol(self, subprotocols: Sequence[str]) -> str | None:
        """The ``subprotocol:NAME`` source the client offered, for the server to echo in the 101.

        Echoing NAME (never the token after it) satisfies browsers, which require the server to
        pick one of the offered values. Returns None when no such source is offered.
        """
        for name in self._subprotocol_names:
            if name in subprotocols:
                return name
        return None

    async def authenticate(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        subprotocols: Sequence[str],
        handshake: HandshakeRequest | None = None,
    ) -> Principal:
        """Check a handshake's token and return its :class:`Principal`.

        ``headers`` is case-insensitive (websockets' ``Headers``); ``query`` holds each
        parameter's first value; ``subprotocols`` the offered values in order. ``handshake``
        (the whole request and its connection id) is what an authorizer's event is built from:
        without it, type = "authorizer" refuses with 500.
        Raises :class:`AuthError` with status 401, 403, 500 or 503 (see the module docstring).
        """
        if self._authorizer is not None:
            if handshake is None:
                raise AuthError(500, "no handshake request to build the authorizer event from")
            return self._authorized(await self._authorizer.authorize(handshake))
        if not self._enabled:
            return Principal("", _addressable(query.get("tenant") or "default", "tenant"), _NO_CONTEXT)
        token = self._find_token(headers, query, subprotocols)
        if token is None:
            raise AuthError(401, "missing token")
        return await self.verify_token(token)

    async def verify_token(self, token: str) -> Principal:
        """Check a token given on a live connection (a token refresh) exactly as
        :meth:`authenticate` checks a handshake's: length, pinned algorithm and key,
        signature, audience, issuer, exp/nbf/iat with leeway, tenant claim.

        Returns its :class:`Principal`; raises :class:`AuthError` (401, 403 or 503), also
        when ``auth.type`` is not "jwt" (there is no token to check then).
        """
        tokens = self._tokens
        if tokens is None:
            raise AuthError(401, "no token authentication configured")
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthError(401, f"token too long ({len(token)} characters)")
        if tokens.direct_key is not None:
            claims = tokens.decode(token, tokens.direct_key, tokens.pinned)
        else:
            key, alg = await tokens.select_key(token)
            claims = tokens.decode(token, key, tokens.alg_lists[alg])
        return self._principal(claims)

    def _authorized(self, allowed: Allowed) -> Principal:
        tenant = allowed.context.get(self._tenant_key)
        if isinstance(tenant, int) and not isinstance(tenant, bool):
            tenant = str(tenant)  # a numeric id, as AWS passes context values on: as text
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(500, f"authorizer context {self._tenant_key!r} is missing or not a non-empty string or integer")
        tenant = _addressable(tenant, f"authorizer context {self._tenant_key!r} is")
        return Principal(allowed.principal_id, tenant, allowed.context)

    def _find_token(
        self, headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
    ) -> str | None:
        for kind, name in self._sources:
            if kind == "header":
                try:
                    value = headers.get(name)
                except LookupError:  # websockets' Headers: the header was sent twice
                    raise AuthError(401, f"{name} header sent more than once") from None
            elif kind == "query":
                value = query.get(name)
            else:
                value = _after(subprotocols, name)
            token = _strip_bearer(value) if value else ""
            if token:
                return token
        return None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(403, f"claim {self._tenant_claim!r} is missing or not a non-empty string")
        tenant = _addressable(tenant, f"claim {self._tenant_claim!r} is")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):  # whatever the PyJWT version checked
            raise AuthError(401, "claim 'sub' is not a string")
        context = {name: claims[name] for name in self._context_claims if name in claims}
        try:  # the connection's record, events and access log carry them as JSON (orjson)
            orjson.dumps([subject, context])
        except TypeError:  # PyJWT's json reads "\ud800" and 2**64 alike; orjson writes neither
            raise AuthError(401, "malformed token: 'sub' or a context claim JSON cannot carry") from None
        exp = claims.get("exp")
        return Principal(
            subject,
            tenant,
            MappingProxyType(context) if context else _NO_CONTEXT,
            float(exp) if exp is not None else None,
        )



def _addressable(tenant: str, what: str) -> str:
    """``tenant``, unless the management API could never address it: 403 past
    :data:`MAX_TENANT_CHARS` or not text UTF-8 can encode (a lone surrogate, which a JWT's
    JSON may hold: no path names it, and the registry and access log cannot write it)
    (``what`` names where it came from, for the log)."""
    if len(tenant) > MAX_TENANT_CHARS:
        raise AuthError(403, f"{what} longer than {MAX_TENANT_CHARS} characters")
    if not tenant.isascii():
        try:
            tenant.encode()
        except UnicodeEncodeError:
            raise AuthError(403, f"{what} not valid Unicode (a lone surrogate)") from None
    return tenant

# ---------------------------------------------------------------- configuration and keys

def _parse_sources(sources: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``"kind:NAME"`` pairs; AuthConfig's rule on ``sources`` has checked their form."""
    return tuple((kind, name) for kind, _, name in (source.partition(":") for source in sources))


# ---------------------------------------------------------------- token helpers

def _after(values: Sequence[str], name: str) -> str | None:
    """The value right after ``name`` in ``values``: the token of a subprotocol source."""
    try:
        return values[values.index(name) + 1]
    except (ValueError, IndexError):
        return None


def _strip_bearer(value: str) -> str:
    value = value.strip()
    if value[:6].lower() == "bearer" and value[6:7] in ("", " ", "\t"):
        return value[6:].lstrip()  # a bare "Bearer" leaves "": no token here
    return value
